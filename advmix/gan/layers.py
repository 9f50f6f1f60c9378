"""Which W+ layers carry the label and which carry nuisances: measured by swapping them.

For a set S of layers, take random pairs (a, b), build mix(a, b, 1, S) (a with b's layers in S)
and read all three images with the attribute probe:
- label change: how often the probe's label for the mix differs from its label for a;
- <attribute> transfer: among the pairs where a and b differ in the attribute, how often the mix
  takes b's value.
A good nuisance set has a low label change and a high transfer. `auto` searches two families of layer
sets under the partner rule training uses: every contiguous range, and the sets a greedy search builds (add
the row that moves the spurious attribute most while the label change stays under `max_label_change`, until
the transfer reaches `min_transfer`). It picks the smallest set (it keeps the most of the source image) within
both bounds; if none reaches the transfer, the set with the highest transfer under the label bound (a set that moves
the nuisance sometimes is worth more to AdvMix than none, and the label bound is the one that keeps mixes valid).
Whether any set met both bounds is recorded (`bar.met`), and the stage warns when none did.
The search reads one half of the bank and the chosen set is measured on the other half, so the reported label
change and transfer are not the optimistic figures of a search. The single layers and groups are also
measured with partners drawn from anyone, which shows where the label lives whatever the rule.
The noise inputs are fixed (const) so that only the swapped layers differ.

These figures read the generator's own images, G(w_mix) against G(w_partner). Training composes its mixes with the
residual, G(w_mix) + (x - G(w_x)) (`train.residual`), and a detail that inversion renders badly (a glasses frame,
lip colour) stays partly in the residual, so every mix adds the source's own back. `as_trained` measures the
perturbation set on the mixes training makes, judged against the probe's reading of the real images.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from advmix.attacks import residuals
from advmix.mixing import layer_groups, mix, partner_key, resolve_layers, synthesize
from advmix.probes import predict


def read(G, probe, ws, batch: int = 256) -> dict[str, np.ndarray]:
    """Probe class indices per head for the images of W+ codes `ws`."""

    with torch.no_grad():
        imgs = synthesize(G, ws, batch)
    return classes(probe, imgs)


def classes(probe, images) -> dict[str, np.ndarray]:
    """The probe's class index per head for uint8 images or a [-1, 1] tensor."""
    return {k: v.argmax(1) for k, v in predict(probe, images).items()}


def pick_partners(labels: np.ndarray, rule: str, rng: np.random.Generator, bank_labels: np.ndarray | None = None
                  ) -> np.ndarray:
    """A partner index for every example: anyone else, or someone else with the same label; with `bank_labels`,
    a row of that other bank (anyone in it, or one of the same class)."""
    n = len(labels)
    key = partner_key(np.asarray(labels), rule)
    bank_key = key if bank_labels is None else partner_key(np.asarray(bank_labels), rule)
    partners = np.empty(n, dtype=int)
    for i in range(n):
        pool = np.flatnonzero(bank_key == key[i])
        if bank_labels is None:
            pool = pool[pool != i]
        partners[i] = rng.choice(pool) if len(pool) else i
    return partners


def swap_scores(G, probe, ws, reading: dict[str, np.ndarray], partners: np.ndarray, layers: list[int],
                bank: tuple | None = None) -> dict[str, float]:
    """Label change and per-attribute transfer of swapping `layers` from partners into ws; the partners are rows
    of ws, or of `bank` = (its codes, their probe reading)."""
    bank_ws, bank_reading = (ws, reading) if bank is None else bank
    mixed = read(G, probe, mix(ws, bank_ws[partners], 1.0, layers))
    return change_scores(mixed, reading, {k: v[partners] for k, v in bank_reading.items()})


def change_scores(mixed: dict[str, np.ndarray], source: dict[str, np.ndarray], theirs: dict[str, np.ndarray]
                  ) -> dict[str, float]:
    """From the probe's readings of the mixes, their sources and their partners: the share of mixes whose label
    differs from the source's, and per attribute the share of the pairs that differ in it where the mix reads as
    the partner (`<head>_transfer`; NaN when no pair differs)."""
    out = {"label_change": float(np.mean(mixed["label"] != source["label"]))}
    for head, values in source.items():
        if head != "label":
            differs = values != theirs[head]
            moved = mixed[head][differs] == theirs[head][differs]
            out[f"{head}_transfer"] = float(moved.mean()) if differs.any() else float("nan")
    return out


def set_name(layers: list[int]) -> str:
    """'2-4' for a contiguous range, '0,1,3' otherwise."""
    layers = sorted(layers)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def candidate_sets(n_latent: int) -> dict[str, list[int]]:
    """Every contiguous range of W+ rows."""
    return {set_name(list(range(i, j + 1))): list(range(i, j + 1)) for i in range(n_latent) for j in range(i, n_latent)}


def search_layers(score, n_latent: int, key: str, max_label_change: float, min_transfer: float
                  ) -> tuple[list[int], dict[str, dict[str, float]]]:
    """The auto rule over contiguous ranges and a greedy path; `score(layers)` measures one set.

    Returns the chosen set and every measured candidate (name -> scores).
    """
    measured: dict[str, dict[str, float]] = {}
    sets: dict[str, list[int]] = {}

    def measure(layers: list[int]) -> dict[str, float]:
        name = set_name(layers)
        if name not in measured:
            measured[name], sets[name] = score(sorted(layers)), sorted(layers)
        return measured[name]

    def transfer(name: str) -> float:
        return float(np.nan_to_num(measured[name][key]))

    for layers in candidate_sets(n_latent).values():
        measure(layers)
    chosen: list[int] = []
    while len(chosen) < n_latent:  # greedy: the row that adds the most transfer within the label bound
        options = [chosen + [r] for r in range(n_latent) if r not in chosen]
        allowed = [o for o in options if measure(o)["label_change"] <= max_label_change]
        if not allowed:
            break
        chosen = max(allowed, key=lambda o: transfer(set_name(o)))
        if transfer(set_name(chosen)) >= min_transfer:
            break

    allowed = [k for k, v in measured.items() if v["label_change"] <= max_label_change]
    enough = [k for k in allowed if transfer(k) >= min_transfer]
    if enough:
        best = min(enough, key=lambda k: (len(sets[k]), -transfer(k)))
    elif allowed:
        best = max(allowed, key=lambda k: (transfer(k), -len(sets[k])))
    else:  # nothing keeps the label: take the set that changes it least
        best = min(measured, key=lambda k: measured[k]["label_change"])
    return sets[best], measured


def analyze(G, probe, ws, spurious: str, layers_spec, partners_rule: str, max_label_change: float,
            min_transfer: float, seed: int, labels: np.ndarray | None = None, progress=None,
            bank: tuple | None = None) -> dict[str, Any]:
    """The full analysis over a bank of W+ codes (generated or inverted), in the metrics/layers.json schema.

    `labels` are the true labels of the bank (inverted real images); for generated codes the probe's
    reading stands in for them. The first half of the bank chooses `auto`, the second half measures the
    perturbation set. `bank` = (codes, classes): the partners of the search and of the perturbation set come from
    it (`mixing.bank: pool`); None: from ws itself.
    """
    rng = np.random.default_rng(seed)
    reading = read(G, probe, ws)
    labels = reading["label"] if labels is None else labels
    any_partner = pick_partners(labels, "any", rng)

    def tick() -> None:
        if progress:
            progress(1)

    singles = {str(i): [i] for i in range(G.n_latent)}
    groups = {k: v for k, v in layer_groups(G.size).items() if v}
    table = {}
    for name, layers in {**singles, **groups}.items():
        table[name] = swap_scores(G, probe, ws, reading, any_partner, layers)
        tick()

    half = len(ws) // 2
    search, held = slice(0, half), slice(half, len(ws))
    search_reading = {k: v[search] for k, v in reading.items()}
    if bank is None:
        partner_bank = bank_labels = None
    else:
        bank_ws, bank_labels = bank
        bank_reading = read(G, probe, bank_ws)
        partner_bank = (bank_ws, bank_reading)
    search_partner = pick_partners(labels[search], partners_rule, rng, bank_labels)

    def score(layers: list[int]) -> dict[str, float]:
        tick()
        return swap_scores(G, probe, ws[search], search_reading, search_partner, layers, partner_bank)

    key = f"{spurious}_transfer"
    auto, candidates = search_layers(score, G.n_latent, key, max_label_change, min_transfer)
    best = candidates[set_name(auto)]
    chosen = auto if layers_spec == "auto" else resolve_layers(layers_spec, G.size)
    held_reading = {k: v[held] for k, v in reading.items()}
    rule_partner = pick_partners(labels[held], partners_rule, rng, bank_labels)
    held_any = pick_partners(labels[held], "any", rng, bank_labels)
    rule_scores = swap_scores(G, probe, ws[held], held_reading, rule_partner, chosen, partner_bank)
    any_scores = swap_scores(G, probe, ws[held], held_reading, held_any, chosen, partner_bank)
    theirs = (held_reading if bank is None else bank_reading)[spurious][rule_partner]
    differs = held_reading[spurious] != theirs
    return {
        "layers": table,
        "auto": auto,
        "auto_candidates": candidates,
        "perturbation": {
            "layers": chosen, "partners": partners_rule, "spurious": spurious, "measured_on": "held-out half",
            "label_change": rule_scores["label_change"], "spurious_transfer": rule_scores[key],
            "pairs_differing_in_spurious": int(differs.sum()),
            "any_partner": {"label_change": any_scores["label_change"], "spurious_transfer": any_scores[key]},
            "all": rule_scores,
        },
        "bar": {"max_label_change": max_label_change, "min_transfer": min_transfer, "measured_on": "search half",
                "met": any(v["label_change"] <= max_label_change and float(np.nan_to_num(v[key])) >= min_transfer
                           for v in candidates.values()),
                "auto": set_name(auto), "label_change": best["label_change"], "spurious_transfer": best[key]},
        "n_pairs": len(ws), "n_search": half, "n_held_out": len(ws) - half,
    }


def perturbation_on_bank(G, probe, ws, labels: np.ndarray, spurious: str, layers: list[int], rule: str,
                         seed: int, bank: tuple | None = None) -> dict[str, Any]:
    """The perturbation set measured on a bank of inverted real images, with their true labels; partners from ws,
    or from `bank` = (codes, classes).

    The reference for "the label changed" and "the attribute moved" is the probe's reading of the
    reconstructions G(w), so inversion error is not counted as a mixing effect.
    """
    rng = np.random.default_rng(seed)
    reading = read(G, probe, ws)
    bank_labels = None if bank is None else bank[1]
    partner_bank = None if bank is None else (bank[0], read(G, probe, bank[0]))
    theirs_of = reading if bank is None else partner_bank[1]
    out = {}
    for name, partners in (("rule", pick_partners(labels, rule, rng, bank_labels)), ("any_partner", pick_partners(
            labels, "any", rng, bank_labels))):
        scores = swap_scores(G, probe, ws, reading, partners, layers, partner_bank)
        out[name] = {"label_change": scores["label_change"], "spurious_transfer": scores[f"{spurious}_transfer"],
                     "pairs_differing_in_spurious": int((reading[spurious] != theirs_of[spurious][partners]).sum())}
    return {"partners": rule, **out.pop("rule"), "any_partner": out["any_partner"], "n": len(ws)}


def as_trained(G, probe, ws, images, labels: np.ndarray, spurious: str, layers: list[int], rule: str, seed: int,
               bank: tuple | None = None) -> dict[bool, dict[str, Any]]:
    """The perturbation set on the mixes training makes from inverted real images (`ws`, their uint8 `images` and
    true `labels`), keyed by `train.residual`: G(w_mix) plus x - G(w_x) (True) or alone (False), clamped as the
    attacks clamp. The reference is the probe's reading of the real images, the source's for the label and the
    partner's for each attribute. Partners are drawn as perturbation_on_bank draws its rule's (the same seed, so
    the same pairs), from ws or from `bank` = (codes, classes, uint8 images)."""
    rng = np.random.default_rng(seed)
    partners = pick_partners(labels, rule, rng, None if bank is None else bank[1])
    bank_ws, bank_images = (ws, images) if bank is None else (bank[0], bank[2])

    real, theirs = classes(probe, images), classes(probe, bank_images[partners])
    with torch.no_grad():
        generated = synthesize(G, mix(ws, bank_ws[partners], 1.0, layers)).float()
    out = {}
    for residual, mixed in ((True, generated + residuals(G, images, ws)), (False, generated)):
        scores = change_scores(classes(probe, mixed.clamp(-1.0, 1.0)), real, theirs)
        transfers = {k.removesuffix("_transfer"): v for k, v in scores.items() if k != "label_change"}
        out[residual] = {"residual": residual, "label_change": scores["label_change"],
                         "spurious_transfer": transfers[spurious],
                         "pairs_differing_in_spurious": int((real[spurious] != theirs[spurious]).sum()),
                         "n": len(ws), "transfers": transfers}
    return out


def heatmap(result: dict[str, Any]):
    """Rows: single layers and groups; columns: label change, then each attribute's transfer."""
    matplotlib.use("Agg")

    rows = list(result["layers"])
    cols = list(result["layers"][rows[0]])
    data = np.array([[result["layers"][r][c] for c in cols] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 0.38 * len(rows) + 1.5))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.replace("_transfer", "") for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [f"W+ {r}" if r.isdigit() else r for r in rows])
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
    ax.set_title(f"Swapping W+ layers: label change vs attribute transfer (auto = {result['auto']})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return fig
