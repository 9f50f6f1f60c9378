"""Evaluation of one trained classifier: accuracy, group and fairness metrics, calibration, and robustness.

Definitions follow the conventions of the spurious-correlation literature, so the numbers sit beside the peers':
- groups are (label, spurious attribute) cells; worst-group accuracy is the lowest group accuracy, and the
  average accuracy is re-weighted by the train split's group proportions (Group DRO's and JTT's convention);
- fairness is measured with respect to the spurious attribute with fairlearn: equalized-odds difference
  (worst of the TPR and FPR gaps), demographic-parity difference, and DEO = |FNR(s=0) - FNR(s=1)| as in
  gan-debiasing (the TPR gap); binary tasks only (None otherwise);
- ECE: equal-width confidence bins over the top-class probability (`evaluate.ece_bins`);
- robust accuracies count an example as correct only when the clean prediction AND the prediction on the
  attack's output are right, so a robust accuracy can never exceed the clean accuracy of the same images:
  semantic robust accuracy under AdvMix at evaluation strength (more partners and steps than in training) and
  pixel PGD at each `evaluate.linf_epsilons`, on a seeded, group-stratified subset of test_balanced;
- mix change error: the share of random mixes (RandMix's perturbation set) whose prediction differs from the
  clean prediction of the same image (lower is more invariant).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference, true_positive_rate
from pydantic import ValidationError

from advmix import paths
from advmix.attacks import AttackConfig, Batch, LatentBank, advmix_attack, pgd_linf, randmix, residual_of
from advmix.data.store import Dataset
from advmix.files import atomic_write_bytes, atomic_write_json
from advmix.groups import group_accuracy
from advmix.images import to_tensor, to_uint8
from advmix.inputs.classifier import load_classifier
from advmix.models import eval_mode
from advmix.modes import SELECTION_RULES, group_labels_read
from advmix.params import EVAL_SPLITS, EvaluateParams, TrainParams
from advmix.results import EvalResult, describe, entry_key, epsilon_label
from advmix.stages import StageError


@dataclass(frozen=True)
class EvalConfig:
    """What the evaluation reads of params.yaml besides the mixing layers, built by the stage that evaluates (each
    key is documented in advmix/params.py)."""

    evaluate: EvaluateParams  # evaluate.*: the robust subsets, the attack's strength, PGD's epsilons, ECE bins
    train: TrainParams  # train.*: the training perturbation set (random mixes; PGD's base) and eval_batch
    partners: str  # mixing.partners: any | same_label
    seed: int  # the attacks' draws and the robust subsets: the same for every classifier


def predict(model, images: np.ndarray, batch: int, device) -> np.ndarray:
    """Class probabilities (float64, N x C) of uint8 N x H x W x 3 images."""

    out = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(images), batch):
            x = to_tensor(images[start:start + batch]).to(device)
            out.append(torch.softmax(model(x).float(), 1).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def group_names(info: dict[str, Any], n_groups: int) -> list[str]:
    """'<class>/<spurious>=<value>' for every group id (group = label * n_spurious + spurious value)."""
    classes = info.get("classes") or [str(c) for c in range(int(info.get("n_classes", 2)))]
    spurious = info.get("spurious", "spurious")
    values = info.get("attributes", {}).get(spurious) or list(range(max(1, n_groups // len(classes))))
    names = [f"{c}/{spurious}={v}" for c in classes for v in values]
    return names[:n_groups] if len(names) >= n_groups else [str(g) for g in range(n_groups)]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Sum over equal-width bins of |accuracy - mean confidence| weighted by the bin's share of examples."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def split_metrics(probs: np.ndarray, ds: Dataset, train_groups: np.ndarray, bins: int) -> tuple[dict, list[dict]]:
    """Metrics of one split from its predicted probabilities; also its by-group rows (for by_group.csv)."""

    y = ds.manifest["label"].to_numpy().astype(int)
    pred = probs.argmax(1)
    ok = pred == y
    groups = ds.manifest["group"].to_numpy().astype(int)
    n_groups = int(max(groups.max(initial=0), train_groups.max(initial=0))) + 1
    names = group_names(ds.info, n_groups)
    prop = np.bincount(train_groups, minlength=n_groups) / max(1, len(train_groups))
    acc_of = group_accuracy(ok, groups)
    present = list(acc_of)
    weights = prop[present] / prop[present].sum() if prop[present].sum() > 0 else np.full(len(present), 1 / len(present))
    out: dict[str, Any] = {
        "acc": float(ok.mean()), "error": float(1 - ok.mean()), "n": len(y),
        "worst_group_acc": min(acc_of.values()),
        "avg_acc_train_weighted": float(sum(w * acc_of[g] for w, g in zip(weights, present))),
        "ece": expected_calibration_error(probs, y, bins),
        "group_acc": {names[g]: acc_of[g] for g in present},
        "eod": None, "dpd": None, "deo": None,
    }
    spurious = ds.manifest[ds.info["spurious"]].to_numpy()
    binary = probs.shape[1] == 2
    if binary and len(np.unique(spurious)) > 1:
        out["eod"] = float(equalized_odds_difference(y, pred, sensitive_features=spurious))
        out["dpd"] = float(demographic_parity_difference(y, pred, sensitive_features=spurious))
        tpr = [true_positive_rate(y[spurious == s], pred[spurious == s]) for s in np.unique(spurious)
               if (y[spurious == s] == 1).any()]
        out["deo"] = float(max(tpr) - min(tpr)) if len(tpr) > 1 else None
    rows = []
    for g in present:
        m = groups == g
        rows.append({"group": names[g], "n": int(m.sum()), "acc": acc_of[g],
                     "selection_rate": float((pred[m] == 1).mean()) if binary else None,
                     "tpr": float(ok[m & (y == 1)].mean()) if binary and (m & (y == 1)).any() else None})
    return out, rows


def stratified_subset(groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to n row indices with the groups as even as the split allows; sorted, fixed by `seed`."""
    if n >= len(groups):
        return np.arange(len(groups))
    rng = np.random.default_rng([seed, 7])
    per_group = {g: rng.permutation(np.flatnonzero(groups == g)) for g in np.unique(groups)}
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for g in sorted(per_group):
            if depth < len(per_group[g]) and len(chosen) < n:
                chosen.append(int(per_group[g][depth]))
        depth += 1
    return np.sort(np.array(chosen))


def uniform_subset(n_rows: int, n: int, seed: int) -> np.ndarray:
    """Up to n row indices drawn uniformly (no group labels needed); sorted, fixed by `seed`."""
    return np.sort(np.random.default_rng([seed, 11]).permutation(n_rows)[:n])


def attack_configs(cfg: EvalConfig, layers: list[int] | None):
    """The training perturbation set (random mixes) and AdvMix at evaluation strength (more partners and steps).

    The evaluation attack draws its partners uniformly (strata 0) whatever train.advmix.strata says: the attack
    every model is measured against must not change with one mode's training choice."""
    base = AttackConfig.from_params(cfg.train, cfg.partners, layers or [])
    e = cfg.evaluate
    return base, replace(base, k=e.partners_k, strata=0, steps=e.steps, step_size=e.step_size)


def robustness(model, ds: Dataset, w: np.ndarray | None, G, layers: list[int] | None, cfg: EvalConfig, device, *,
               rows: np.ndarray | None = None, pixel: bool = True,
               partners: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Semantic (AdvMix) and pixel (PGD) robust accuracy and mix change error on `rows` of `ds`: EvalResult's
    fields of the same names (advmix/results.py).

    `rows`: default, a seeded group-stratified subset of `evaluate.robust_images`. `pixel`: also PGD.
    `partners`: (codes, classes) to draw the mixing partners from; None: the split's own codes `w`.
    """

    e = cfg.evaluate
    if rows is None:
        rows = stratified_subset(ds.manifest["group"].to_numpy(), e.robust_images, cfg.seed)
    epsilons = e.linf_epsilons if pixel else []
    y_all = torch.from_numpy(ds.manifest["label"].to_numpy().astype(np.int64))
    base, strong = attack_configs(cfg, layers)
    rng = torch.Generator().manual_seed(cfg.seed * 1000 + 31)
    bank = own = None
    if G is not None and w is not None and layers:
        if partners is None:
            bank = LatentBank(torch.from_numpy(w), y_all).to(device)
            own = bank.w
        else:
            bank = LatentBank(torch.from_numpy(partners[0]), partners[1]).to(device)
            own = torch.from_numpy(w).to(device)
        G = G.to(device).eval().requires_grad_(False)
    counts = {"clean": 0, "semantic": 0, "changed": 0, "mixes": 0} | {f"linf_{eps}": 0 for eps in epsilons}
    model = model.to(device).eval()
    for chunk in np.array_split(rows, max(1, len(rows) // cfg.train.eval_batch + 1)):
        if not len(chunk):
            continue
        idx = torch.from_numpy(chunk)
        x = to_tensor(ds.images[chunk]).to(device)
        y = y_all[idx].to(device)
        with torch.no_grad():
            clean_pred = model(x).argmax(1)
        clean_ok = clean_pred == y
        counts["clean"] += int(clean_ok.sum())
        batch = Batch(x, y, w=None if own is None else own[idx.to(own.device)],
                      index=idx if partners is None else None)  # in its own bank: not its own partner
        if bank is not None:
            if base.residual:  # once for the chunk's 1 + random_mixes attacks (the same synthesis each would do)
                batch.residual = residual_of(G, batch)
            x_adv, _ = advmix_attack(model, batch, bank, G, strong, rng)
            with torch.no_grad():
                counts["semantic"] += int((clean_ok & (model(x_adv).argmax(1) == y)).sum())
                for _ in range(e.random_mixes):
                    x_mix, _ = randmix(model, batch, bank, G, base, rng)
                    counts["changed"] += int((model(x_mix).argmax(1) != clean_pred).sum())
                    counts["mixes"] += len(chunk)
        for eps in epsilons:
            pgd = replace(base, epsilon=eps, pgd_steps=e.linf_steps, pgd_step_size=eps / 4)
            x_adv, _ = pgd_linf(model, batch, None, None, pgd, rng)
            with torch.no_grad():
                counts[f"linf_{eps}"] += int((clean_ok & (model(x_adv).argmax(1) == y)).sum())
    n = len(rows)
    out: dict[str, Any] = {"robust_images": int(n), "robust_clean_acc": counts["clean"] / n,
                           "semantic_robust_acc": counts["semantic"] / n if bank is not None else None,
                           "mix_change_error": counts["changed"] / counts["mixes"] if counts["mixes"] else None}
    if epsilons:
        out["pgd_robust_acc"] = {epsilon_label(eps): counts[f"linf_{eps}"] / n for eps in epsilons}
    return out


def val_selection(model, val: Dataset, w: np.ndarray, G, layers: list[int], cfg: EvalConfig, device,
                  partners: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """The label-free figure for choosing hyperparameters: AdvMix-robust accuracy on val at evaluation strength.

    Val carries the training correlation, so its clean accuracy cannot see a shortcut (every AdvMix setting
    measured scored 0.99-1.0); an attack that swaps the nuisance rows can. No group label is read: the images
    are a seeded uniform subset and the partners are val's own codes (under `mixing.partners`), or `partners`:
    under `mixing.bank: pool` the pool partners training draws from, since at rho 0.99 a same-label partner from
    val itself almost never differs in the nuisance.
    """
    rows = uniform_subset(len(val), cfg.evaluate.val_robust_images, cfg.seed)
    r = robustness(model, val, w, G, layers, cfg, device, rows=rows, pixel=False, partners=partners)
    return {"val_robust_images": len(rows), "val_semantic_robust_acc": r["semantic_robust_acc"],
            "val_mix_change_error": r["mix_change_error"]}


def clean_metrics(model, ds: Dataset, cfg: EvalConfig, device) -> tuple[dict[str, dict], list[dict]]:
    """split_metrics of every labelled split `ds` holds, and their by-group rows."""
    model = model.to(device).eval()
    train_groups = ds.split("train").manifest["group"].to_numpy().astype(int)
    splits: dict[str, dict] = {}
    by_group: list[dict] = []
    for split in EVAL_SPLITS:
        part = ds.split(split)
        if len(part):
            probs = predict(model, part.images, cfg.train.eval_batch, device)
            splits[split], rows = split_metrics(probs, part, train_groups, cfg.evaluate.ece_bins)
            by_group += [{"split": split} | r for r in rows]
    return splits, by_group


def evaluate_classifier(model, ds: Dataset, cfg: EvalConfig, device, *, G=None, latents: np.ndarray | None = None,
                        layers: list[int] | None = None, val_latents: np.ndarray | None = None,
                        val_partners: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> tuple[dict[str, Any], list[dict]]:
    """Every metric of one classifier. `ds` holds all splits; `latents`: W+ codes of test_balanced (row order),
    `val_latents` those of val and `val_partners` its partner bank, if not val itself (for the selection figure,
    `val_selection`).

    Returns the metrics ({"splits": {split: {...}}, robust figures}) and the by-group rows of every split.
    """
    model = model.to(device).eval()  # a loaded classifier is on the CPU
    splits, by_group = clean_metrics(model, ds, cfg, device)
    result: dict[str, Any] = {"splits": splits}
    balanced = ds.split("test_balanced")
    if len(balanced):
        result |= robustness(model, balanced, latents, G, layers, cfg, device)
    val = ds.split("val")
    if G is not None and val_latents is not None and layers and len(val) and cfg.evaluate.val_robust_images:
        result |= val_selection(model, val, val_latents, G, layers, cfg, device, val_partners)
    return result, by_group


def worst_mixes(models: dict[str, Any], ds: Dataset, w: np.ndarray, G, layers: list[int], cfg: EvalConfig, device
                ) -> dict[str, np.ndarray]:
    """The AdvMix mixes of `ds` that hurt the first model most, with every model's prediction on them.

    For the report: which mixes fool nominal training, and whether AdvMix training holds on them.
    """

    e = cfg.evaluate
    rows = stratified_subset(ds.manifest["group"].to_numpy(), min(e.robust_images, 128), cfg.seed)
    y = torch.from_numpy(ds.manifest["label"].to_numpy().astype(np.int64))
    strong = attack_configs(cfg, layers)[1]
    bank = LatentBank(torch.from_numpy(w), y).to(device)
    G = G.to(device).eval().requires_grad_(False)
    first = next(iter(models.values())).to(device).eval()
    idx = torch.from_numpy(rows)
    x = to_tensor(ds.images[rows]).to(device)
    batch = Batch(x, y[idx].to(device), w=bank.w[idx.to(device)], index=idx)
    x_adv, _ = advmix_attack(first, batch, bank, G, strong, torch.Generator().manual_seed(cfg.seed * 1000 + 37))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(first(x_adv).float(), batch.y, reduction="none")
        order = torch.argsort(loss, descending=True)[: e.worst_mixes].cpu()
        out = {"clean": ds.images[rows[order.numpy()]],
               "mixed": to_uint8(x_adv[order.to(device)]),
               "label": batch.y[order.to(device)].cpu().numpy()}
        for name, model in models.items():
            model = model.to(device).eval()
            out[f"pred_{name}"] = model(x_adv[order.to(device)]).argmax(1).cpu().numpy()
    return out


# ----------------------------------------------------------------------------------------------------------------
# A run's result on disk: metrics/eval/<run>.json and its by_group.csv (the evaluate and dfr stages write them)


@dataclass
class Evaluated:
    name: str  # <mode>-s<seed>
    result: EvalResult  # what metrics/eval/<name>.json holds
    seconds: float

    def summary(self) -> str:
        r, bal = self.result, self.result.splits.get("test_balanced")
        return (f"{self.name}: test_balanced error {bal.error if bal else float('nan'):.4f}, worst group "
                f"{bal.worst_group_acc if bal else float('nan'):.4f}, semantic robust acc {r.semantic_robust_acc}, "
                f"mix change error {r.mix_change_error}, val robust acc (selection) {r.val_semantic_robust_acc}, "
                f"{self.seconds:.0f} s")


def run_clean(cfg: EvalConfig, ds, mode: str, seed: int, device) -> Evaluated:
    """The clean metrics alone (no attack): the measurement of a DFR refit, written like `run`'s."""

    t0 = time.time()
    model, payload = load_classifier(mode, seed, with_payload=True)
    splits, by_group = clean_metrics(model, ds, cfg, device)
    return write_result(cfg, ds, mode, seed, payload, {"splits": splits}, by_group, device, t0)


def write_result(cfg: EvalConfig, ds, mode: str, seed: int, payload: dict[str, Any], result: dict[str, Any], by_group: list,
                 device, t0: float) -> Evaluated:
    """Add the other selection rules' epochs, measured clean (the attacks are the default rule's alone), and what
    the run read of the group labels; write metrics/eval/<run>.json and its by_group.csv."""

    epochs = payload.get("selected_epochs") or {}
    selection: dict[str, Any] = {SELECTION_RULES[0]: {"epoch": epochs.get(SELECTION_RULES[0])}}
    for rule in SELECTION_RULES[1:]:
        if rule in epochs:  # classifiers written before the rule existed hold only the default's weights
            splits, _ = clean_metrics(load_classifier(mode, seed, rule=rule), ds, cfg, device)
            selection[rule] = {"epoch": epochs[rule], "splits": splits}
    read = group_labels_read(mode)
    try:  # the schema that the report reads: a NaN or a missing figure stops here, before any file is written
        checked = EvalResult(mode=mode, seed=seed, uses_group_labels=read != "none", group_labels_read=read,
                             selection=selection, torch_threads=torch.get_num_threads(), **result)
    except ValidationError as exc:
        raise StageError(f"{paths.eval_metrics(mode, seed)}: not written, the evaluation of {mode} seed {seed} gave "
                         f"{describe(exc)} (a broken classifier or non-finite images)") from None
    name = paths.run_name(mode, seed)
    atomic_write_bytes(paths.eval_by_group(mode, seed), pd.DataFrame(by_group).to_csv(index=False).encode())
    atomic_write_json(paths.eval_metrics(mode, seed), {entry_key(name): checked.to_json()})
    return Evaluated(name, checked, time.time() - t0)
