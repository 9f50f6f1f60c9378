"""train: the classifier of one mode and seed; the best val epoch is kept, and a killed run resumes.

Writes models/classifier-<mode>-s<seed>.pt, the dvclive folder results/train/<mode>-s<seed>/ and
metrics/train/<mode>-s<seed>.json. The resumable state lives in the scratch folder (advmix.paths.train_state),
outside every DVC output.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advmix.inputs.data import dataset
from advmix.inputs.gan import mixing_inputs, partner_bank
from advmix.stages import Progress, StageError, no_progress

if TYPE_CHECKING:
    from advmix.classifier_training import ClassifierRun, TrainConfig


@dataclass
class Trained:
    path: Path  # the classifier
    metrics: dict[str, Any]  # metrics/train/<run>.json's one entry
    seconds: float

    def summary(self) -> str:
        m, nan = self.metrics, float("nan")
        return (f"{self.path}: best epoch {m['best_epoch'] + 1}/{m['epochs']}, val acc {m['val_acc']:.4f} (worst "
                f"group {m.get('val_worst_group_acc', nan):.4f}), {self.seconds:.0f} s")


def require_a_commit() -> None:
    """dvclive, train's per-epoch log, reads git's HEAD: in a repository without a commit it fails deep inside
    (scmrepo's "Empty git repo"). Say so before any work. Outside git, or without git, dvclive needs nothing."""
    import subprocess

    try:
        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, check=False)
        head = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], capture_output=True, check=False)
    except FileNotFoundError:
        return
    if inside.returncode == 0 and head.returncode != 0:
        raise StageError("this git repository has no commit yet, and dvclive (train's per-epoch log) needs one: "
                         "run `git add -A && git commit -m start` once, then rerun")


def train_config(p, layers: list[int] | None) -> TrainConfig:
    """What the trainer reads of params: train.*, the attacks (mixing.partners, the resolved `layers`), the seed."""
    from advmix.attacks import AttackConfig
    from advmix.classifier_training import TrainConfig

    return TrainConfig(p.train, AttackConfig.from_params(p.train, p.mixing.partners, layers or []), p.seed)


def fit(mode: str, train, val, config: TrainConfig, state: Path, live_dir: Path | None, **kwargs) -> ClassifierRun:
    """One mode's training loop: JTT trains twice (advmix.classifier_training.train_jtt), every other mode once
    (train_classifier, which takes G and latents for the mixing modes)."""
    from advmix.classifier_training import train_classifier, train_jtt

    if mode == "jtt":
        return train_jtt(train, val, config, state, live_dir, progress=kwargs.get("progress"))
    return train_classifier(mode, train, val, config, state, live_dir, **kwargs)


def run(p, mode: str, seed: int | None = None, progress: Progress = no_progress) -> Trained | None:
    """`seed` is the classifier's (default: `seed`); the data and the GAN keep theirs. None on a torchrun rank
    other than 0 (rank 0 writes)."""
    import torch

    from advmix import paths
    from advmix.classifier_training import score_split
    from advmix.files import atomic_folder, atomic_write_json
    from advmix.gan.latents import LatentsError
    from advmix.models import save_classifier
    from advmix.modes import MIXING_MODES, SELECTION_RULES
    from advmix.runtime import distributed

    seed = p.seed if seed is None else seed
    p = p.model_copy(update={"seed": seed})
    rank = distributed()[0]
    if rank == 0:
        require_a_commit()
    ds = dataset(p)
    train, val = ds.split("train"), ds.split("val")
    G = latents = layers = partners = None
    if mode in MIXING_MODES:
        G, layers, latents = mixing_inputs(p, ds, "train")
        if p.mixing.bank != "train":
            partners = partner_bank(p, ds, G, latents)
    config = train_config(p, layers)
    state = paths.train_state(mode, seed)
    state.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # dvclive writes into a temp folder that replaces the old one only on success: a failed run loses nothing
    live = atomic_folder(paths.train_live_dir(mode, seed)) if rank == 0 else nullcontext()
    with progress(f"train {mode} seed {seed}", p.train.epochs * max(1, len(train) // p.train.batch)) as step:
        try:
            def on_step(done: int, total: int, s: dict[str, float]) -> None:
                step(completed=done, of=total, info=f"epoch {s['epoch']} loss {s['loss']:.3f}")

            with live as live_dir:
                run = fit(mode, train, val, config, state, live_dir, G=G, latents=latents, partners=partners,
                          progress=on_step)
        except (LatentsError, ValueError) as exc:
            raise StageError(str(exc)) from None
    if run.rank != 0:
        return None

    # ---- the kept epoch: saved, then measured on the splits training read (train, val) ----
    model = run.model
    path = paths.classifier(mode, seed)
    default_rule, *other_rules = SELECTION_RULES
    save_classifier(path, model, run.config, extra={
        "mode": mode, "best_epoch": run.best_epoch, "best_val_acc": run.best_val_acc, "seed": seed,
        "layers": layers, "partners": p.mixing.partners if mode in MIXING_MODES else None,
        "default_rule": default_rule, "selected_epochs": run.best_epochs},
        rule_states={rule: run.states[rule] for rule in other_rules})
    device = torch.device(run.device)
    model = model.to(device)
    out = {"best_epoch": run.best_epoch, "selected_epochs": run.best_epochs, "epochs": run.epochs, "seconds": round(run.seconds, 2),
           "images_per_s": round(run.images_per_s, 2), "resumed_from_epoch": run.resumed_from["epoch"],
           "torch_threads": torch.get_num_threads()}  # CPU results are bitwise reproducible at the same count
    for split, part in (("train", train), ("val", val)):  # the test splits are measured by `advmix evaluate` alone
        for key, value in score_split(model, part, p.train.eval_batch, device).items():
            out[f"{split}_{key}"] = value
    atomic_write_json(paths.train_metrics(mode, seed), {f"train_{mode}_s{seed}": out})
    return Trained(path, out, time.time() - t0)
