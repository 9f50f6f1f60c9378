"""dfr: Deep Feature Reweighting of one trained classifier (advmix/dfr.py), the run dfr_<base>; it reads the group
labels of val only.

Writes models/classifier-dfr_<base>-s<seed>.pt, which holds one refit per model-selection rule (each rule's epoch
of the base, refit), metrics/train/dfr_<base>-s<seed>.json (the strengths chosen), and its clean measurement,
metrics/eval/dfr_<base>-s<seed>.json with results/eval/dfr_<base>-s<seed>/by_group.csv, as evaluate writes them
(no attack: a DFR row has no robustness figures; `advmix evaluate --mode dfr_<base>` measures those by hand).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advmix.inputs.data import dataset
from advmix.stages import StageError


@dataclass
class Refitted:
    path: Path  # the refit classifier
    metrics: dict[str, Any]  # metrics/train/dfr_<base>-s<seed>.json's one entry
    seconds: float

    def summary(self) -> str:
        chosen = ", ".join(f"{rule} C {r['strength']:g} (half-val worst group {r['half_worst_group_acc']:.3f})"
                           for rule, r in self.metrics["rules"].items())
        return f"{self.path}: {chosen}, {self.seconds:.0f} s"


def run(p, base: str, seed: int | None = None) -> Refitted:
    from advmix import paths
    from advmix.dfr import refit
    from advmix.files import atomic_write_json
    from advmix.inputs.classifier import load_classifier
    from advmix.metrics import EvalConfig, run_clean
    from advmix.models import save_classifier
    from advmix.modes import SELECTION_RULES, dfr_run
    from advmix.runtime import pick_device

    seed = p.seed if seed is None else seed
    if base not in p.train.modes:
        raise StageError(f"--base {base}: not in train.modes {p.train.modes}; DFR refits a trained classifier")
    ds = dataset(p)
    val = ds.split("val")
    if not len(val):
        raise StageError("the dataset has no val split: DFR refits on it")
    device = pick_device(p.train.device, "train.device")
    t0 = time.time()
    _, payload = load_classifier(base, seed, with_payload=True)
    epochs = payload.get("selected_epochs") or {SELECTION_RULES[0]: payload.get("best_epoch")}
    fits = {}
    for rule in (r for r in SELECTION_RULES if r in epochs):
        model = load_classifier(base, seed, rule=rule)
        try:
            fits[rule] = refit(model, val, p.dfr.strengths, p.dfr.subsets, seed, p.train.eval_batch, device)
        except ValueError as exc:
            raise StageError(f"dfr --base {base}: {exc}") from None
    default, *others = SELECTION_RULES
    name = dfr_run(base)
    path = paths.classifier(name, seed)
    save_classifier(path, fits[default].model, payload["config"], extra={
        "mode": name, "base": base, "seed": seed, "best_epoch": epochs[default], "default_rule": default,
        "selected_epochs": epochs}, rule_states={r: fits[r].model.state_dict() for r in others if r in fits})
    metrics = {"base": base, "seed": seed, "n_val": len(val), "selected_epochs": epochs, "rules": {
        rule: {"strength": f.strength, "half_worst_group_acc": f.half_worst_group_acc[f.strength],
               "by_strength": {str(c): s for c, s in f.half_worst_group_acc.items()}} for rule, f in fits.items()}}
    atomic_write_json(paths.train_metrics(name, seed), {f"train_{name}_s{seed}": metrics})
    run_clean(EvalConfig(p.evaluate, p.train, p.mixing.partners, p.seed), ds, name, seed, device)  # its metrics/eval file: DFR is measured clean, without attacks
    return Refitted(path, metrics, time.time() - t0)
