"""What each stage writes, and a check before any work that it can write there.

A read-only folder or file then costs one line at the start, not a PermissionError after the work (a classifier
trained for minutes, then lost). tests/test_paths.py holds this table to the outs that dvc.yaml declares."""

from __future__ import annotations

import os
from pathlib import Path

from advmix import paths
from advmix.modes import dfr_run
from advmix.stages import StageError


def stage_outputs(stage: str, p, mode: str | None = None, seed: int | None = None) -> list[Path]:
    """The files and folders `advmix <stage>` writes (the train stages' scratch state included); `mode` and `seed`
    for train, evaluate and dfr (for dfr, `mode` is the base)."""
    seed = p.seed if seed is None else seed
    if stage == "train":
        return [paths.classifier(mode, seed), paths.train_live_dir(mode, seed), paths.train_metrics(mode, seed),
                paths.train_state(mode, seed)]
    if stage == "evaluate":
        return [paths.eval_dir(mode, seed), paths.eval_metrics(mode, seed)]
    if stage == "dfr":
        refit = dfr_run(mode)
        return [paths.classifier(refit, seed), paths.train_metrics(refit, seed), paths.eval_metrics(refit, seed),
                paths.eval_dir(refit, seed)]
    return {
        "check-params": [paths.PARAMS_CHECKED],
        "prepare": [paths.dataset_dir(p.data.name)],
        "validate": [paths.validation_dir(), paths.validation_metrics()],
        "pool": [paths.POOL_DIR],
        "probe": [paths.PROBE, paths.PROBE_METRICS],
        "train-gan": [paths.GAN_DIR, paths.GAN_REPORTS, paths.GAN_METRICS, paths.GAN_STATE],
        "train-encoder": [paths.ENCODER, paths.ENCODER_METRICS],
        "extract": [paths.LATENTS_DIR, paths.INVERSION_FIGURE, paths.INVERSION_METRICS],
        "invert-pool": [paths.POOL_LATENTS.parent],
        "analyze-layers": [paths.LAYERS_FIGURE, paths.LAYERS_METRICS, paths.LAYERS_AS_TRAINED],
        "worst-mixes": [paths.WORST_MIXES.parent],
        "report": [paths.SUMMARY_MD, paths.SUMMARY_HTML, paths.SUMMARY_DIR, paths.SUMMARY_METRICS],
    }[stage]


def check_writable(stage: str, targets: list[Path]) -> None:
    """StageError naming the first target that cannot be written: itself read-only (an existing file or folder),
    or the nearest folder above it that exists. Files are replaced by a rename in their folder, so both count."""
    for target in map(Path, targets):
        existing = target if target.exists() else next(a for a in target.parents if a.exists() or a == Path("."))
        folder = existing if existing.is_dir() else existing.parent
        for blocked in dict.fromkeys([existing, folder]):  # the target itself, then the folder it lives in
            if not os.access(blocked, os.W_OK):
                raise StageError(f"{blocked}: read-only, and `advmix {stage}` writes {target} there; make it writable "
                                 f"(chmod u+w {blocked}) and rerun")
