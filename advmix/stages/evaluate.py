"""evaluate: one classifier's accuracy, group and fairness metrics, ECE, and semantic and pixel robustness.

Writes metrics/eval/<mode>-s<seed>.json and results/eval/<mode>-s<seed>/by_group.csv. The attacks draw from
`seed` (not the classifier's seed), so every classifier meets the same test images and partners.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from advmix.results import EvalResult
from advmix.stages import StageError
from advmix.stages.read_data import dataset
from advmix.stages.read_gan import mixing_inputs, split_latents


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


def load_classifier(mode: str, seed: int, rule: str | None = None, with_payload: bool = False):
    """The trained classifier of a run (the weights that selection `rule` keeps; None: the default rule's), with
    its checkpoint's other entries if asked, or a StageError that says how to make it."""
    from advmix import paths
    from advmix.models import load_classifier as load

    path = paths.classifier(mode, seed)
    try:
        model, payload = load(path, rule=rule)
    except FileNotFoundError:
        raise StageError(f"{path}: no such classifier; run `advmix train --mode {mode} --seed {seed}` first") from None
    except ValueError as exc:  # a broken file
        raise StageError(str(exc)) from None
    recorded = (payload.get("mode", mode), payload.get("seed", seed))
    if recorded != (mode, seed):  # a copied or renamed file: its numbers would be written as another run's
        raise StageError(f"{path}: holds the classifier of mode {recorded[0]} seed {recorded[1]}, not {mode} seed "
                         f"{seed}; rerun `advmix train --mode {mode} --seed {seed}`")
    return (model, payload) if with_payload else model


def run(p, mode: str, seed: int | None = None) -> Evaluated:
    from advmix import paths
    from advmix.evaluate import evaluate_classifier
    from advmix.runtime import pick_device

    seed = p.seed if seed is None else seed
    ds = dataset(p)
    model, payload = load_classifier(mode, seed, with_payload=True)
    device = pick_device(p.train.device, "train.device")
    G = latents = val_latents = layers = None
    if paths.GENERATOR.is_file() and paths.latents_file("test_balanced").is_file():
        G, layers, latents = mixing_inputs(p, ds, "test_balanced")
        if paths.latents_file("val").is_file():
            val_latents = split_latents(ds, "val", G)
    t0 = time.time()
    result, by_group = evaluate_classifier(model, ds, p, device, G=G, latents=latents, layers=layers,
                                           val_latents=val_latents)
    return write_result(p, ds, mode, seed, payload, result, by_group, device, t0)


def run_clean(p, ds, mode: str, seed: int, device) -> Evaluated:
    """The clean metrics alone (no attack): the measurement of a DFR refit, written like `run`'s."""
    from advmix.evaluate import clean_metrics

    t0 = time.time()
    model, payload = load_classifier(mode, seed, with_payload=True)
    splits, by_group = clean_metrics(model, ds, p, device)
    return write_result(p, ds, mode, seed, payload, {"splits": splits}, by_group, device, t0)


def write_result(p, ds, mode: str, seed: int, payload: dict[str, Any], result: dict[str, Any], by_group: list,
                 device, t0: float) -> Evaluated:
    """Add the other selection rules' epochs, measured clean (the attacks are the default rule's alone), and what
    the run read of the group labels; write metrics/eval/<run>.json and its by_group.csv."""
    import pandas as pd
    import torch
    from pydantic import ValidationError

    from advmix import paths
    from advmix.evaluate import clean_metrics
    from advmix.files import atomic_write_bytes, atomic_write_json
    from advmix.modes import SELECTION_RULES, group_labels_read
    from advmix.results import describe, entry_key

    epochs = payload.get("selected_epochs") or {}
    selection: dict[str, Any] = {SELECTION_RULES[0]: {"epoch": epochs.get(SELECTION_RULES[0])}}
    for rule in SELECTION_RULES[1:]:
        if rule in epochs:  # classifiers written before the rule existed hold only the default's weights
            splits, _ = clean_metrics(load_classifier(mode, seed, rule=rule), ds, p, device)
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
