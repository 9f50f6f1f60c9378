"""One training loop for every mode of advmix/modes.py: nominal (ERM), randmix, advmix, linf (pixel PGD),
groupdro, augmix and jtt.

Each batch of the train split is drawn from a per-epoch permutation fixed by (seed, epoch). In every mode but
nominal, a share `1 - train.clean_ratio` of the batch (chosen at random) is replaced by its adversarial or
random-mix version (AugMix: its augmented version), with the label unchanged, and the model takes one step on
the mixed batch. Group DRO (Sagawa et al. 2020) is the one mode that reads group labels (label x spurious
attribute): its loss is the q-weighted mean of the per-group losses of the batch, q updated by exponentiated
gradient (q_g <- q_g exp(eta (l_g + C / sqrt(n_g))), renormalised) before each step, C the generalisation
adjustment (`train.groupdro.adjustment`, 0 by default) and n_g the group's train count; it has its own weight
decay (`train.groupdro.weight_decay`), since the paper needs far stronger l2 than ERM.
JTT (Liu et al. 2021) is nominal training twice: an identification run of `train.jtt.epochs_first` epochs, whose
errors on train then appear `train.jtt.upweight` times in every epoch of the final run (`train_jtt`).

Model selection: every run keeps the weights of two epochs, one per rule of SELECTION_RULES. `label_free`, the
paper's setting and the default, keeps the epoch of best val accuracy (val has train's spurious correlation; no
group label is read). `val_worst_group` keeps the epoch of best val worst-group accuracy, val accuracy breaking
ties: it reads the group labels of val, as SubpopBench's "group labels known on val" setting and Group DRO's
early stopping do. No group label is read in training except by groupdro.

Checkpoint and resume (advmix/resume.py): the whole training state (model, optimiser, scheduler, epoch, step
within the epoch, the epoch's running sums, every RNG state, the history and the best weights so far) is written
atomically at the end of every epoch and every `train.checkpoint_minutes` within one. A rerun with the same params
and data continues from it, through the same batches, and on CPU ends with bitwise the same weights as a run that
was never interrupted. The dvclive folder is rebuilt from the saved history on every start, so its metrics have
one row per epoch with no gap and no duplicate. The state file is deleted when training completes.

Under `torchrun` (WORLD_SIZE > 1) every rank takes its share of each global batch (`train.batch` is the global
batch), torch's DistributedDataParallel averages the gradients (bucketed all-reduce overlapped with the backward
pass), and rank 0's BatchNorm buffers are broadcast after every step, so every rank holds the same model. On CUDA the forward
passes run under bf16 autocast with channels_last activations.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from dvclive import Live

from advmix import resume
from advmix.attacks import ATTACKS, AttackConfig, Batch, LatentBank, residuals
from advmix.data.store import Dataset
from advmix.gan.latents import LatentsError
from advmix.groups import worst_group_acc
from advmix.images import to_tensor
from advmix.models import build_model, eval_mode
from advmix.modes import GROUP_LABEL_MODES, MIXING_MODES, NAMES, SELECTION_RULES
from advmix.params import TrainParams
from advmix.runtime import rank_and_device

STATE_VERSION = 3  # the layout of the training state (advmix.resume)
RESIDUAL_BANK_BYTES = 2 << 30  # the train split's residuals are kept on the device up to this size (float32)


@dataclass(frozen=True)
class TrainConfig:
    """Everything train_classifier reads besides the data, built by the train stage. Each knob is documented once:
    train.* in TrainParams (advmix/params.py), the attacks' in AttackConfig (advmix/attacks.py)."""

    train: TrainParams  # train.*: model, optimiser, schedule, epochs, batch, each mode's knobs, device, checkpoints
    attack: AttackConfig  # the resolved mixing layers, the partner rule and every attack's strength
    seed: int  # the classifier's: initial weights, batch order, attack draws


def model_config(t: TrainParams, n_classes: int, resolution: int) -> dict[str, Any]:
    return {"model": t.model, "n_classes": int(n_classes), "resolution": int(resolution), "width": t.width}


def fingerprint(mode: str, cfg: TrainConfig, train: Dataset, val: Dataset, latents: np.ndarray | None,
                epoch_rows: np.ndarray | None = None) -> str:
    """What a resumable state must match: mode, training params, attack, seed, and the data it sees."""
    keep = cfg.train.model_dump(mode="json", exclude={"modes", "seeds", "checkpoint_minutes", "device",
                                                         "eval_batch"})
    spec = [mode, keep, cfg.attack.__dict__ if mode != "nominal" else None, cfg.seed, list(val.images.shape)]
    return resume.fingerprint(
        spec, images=train.images, labels=train.manifest["label"].to_numpy().astype(np.int64),
        latents=latents if mode in MIXING_MODES else None,
        groups=train.manifest["group"].to_numpy().astype(np.int64) if mode in GROUP_LABEL_MODES else None,
        epoch_rows=None if epoch_rows is None else np.asarray(epoch_rows, dtype=np.int64))


def group_dro_loss(losses, groups, q, step_size: float, world: int = 1, adjustment=None):
    """Group DRO's robust loss of one batch; updates the group weights `q` in place.

    Per-group mean losses (groups absent from the batch keep their weight and add nothing); under torchrun the
    weights are updated from the group losses of the whole global batch, so every rank holds the same q.
    `adjustment`: C / sqrt(n_g) per group, added to the group losses that update q (the paper's generalisation
    adjustment: small groups, whose train loss underestimates their test loss, get more weight).
    """
    n_groups = len(q)
    sums = torch.zeros(n_groups, device=losses.device, dtype=losses.dtype).index_add(0, groups, losses)
    counts = torch.bincount(groups, minlength=n_groups).to(losses.dtype)
    means = sums / counts.clamp(min=1)
    with torch.no_grad():
        global_sums, global_counts = sums.detach().clone(), counts.clone()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(global_sums)
            dist.all_reduce(global_counts)
        present = global_counts > 0
        group_loss = global_sums / global_counts.clamp(min=1)
        if adjustment is not None:
            group_loss = group_loss + adjustment
        q.mul_(torch.where(present, torch.exp(step_size * group_loss), 1.0))
        q.div_(q.sum())
    return (q * means).sum()


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then cosine to zero or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build_optimizer(model, t: TrainParams, mode: str):
    decay = t.groupdro.weight_decay if mode == "groupdro" else t.weight_decay
    if t.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9, nesterov=True, weight_decay=decay)


def selection_score(record: dict[str, float], rule: str) -> tuple[float, ...]:
    """What a selection rule maximises over the epochs of a run's history (see the module docstring)."""
    if rule == "label_free":
        return (record["val/acc"],)
    if rule == "val_worst_group":
        return (record.get("val/worst_group_acc", -1.0), record["val/acc"])
    raise ValueError(f"unknown selection rule {rule!r}; expected one of {SELECTION_RULES}")


def select_epoch(history: list[dict[str, float]], rule: str) -> int:
    """The epoch (index into `history`) that `rule` keeps: the first one of the highest score."""
    scores = [selection_score(r, rule) for r in history]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def labels_of(ds: Dataset):
    return torch.from_numpy(np.array(ds.manifest["label"].to_numpy(), dtype=np.int64))


def score_split(model, ds: Dataset, batch: int, device, rank: int = 0, world: int = 1) -> dict[str, float]:
    """Loss, accuracy and error on a split (sharded over ranks, summed); worst-group accuracy when the split
    has a `group` column (read by the val_worst_group selection rule only)."""

    y_all = labels_of(ds)
    rows = torch.arange(rank, len(ds), world)
    sums = torch.zeros(3, dtype=torch.float64)
    correct_all = torch.zeros(len(ds), dtype=torch.float64)  # 1 where right; each rank fills its own rows
    with eval_mode(model), torch.no_grad(), _amp(device):
        for chunk in rows.split(batch):
            x = _to_device(to_tensor(ds.images[chunk.numpy()]), device)
            y = y_all[chunk].to(device)
            logits = model(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
            ok = (logits.argmax(1) == y).cpu()
            sums[1] += ok.sum().item()
            sums[2] += len(chunk)
            correct_all[chunk] = ok.double()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
        dist.all_reduce(correct_all)
    out = {"loss": float(sums[0] / sums[2]), "acc": float(sums[1] / sums[2])}
    out["error"] = 1.0 - out["acc"]
    if "group" in ds.manifest.columns:
        groups = ds.manifest["group"].to_numpy()
        out["worst_group_acc"] = worst_group_acc(correct_all.numpy() > 0.5, groups)
    return out


def _amp(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _to_device(x, device):
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _broadcast_buffers(model, world: int) -> None:
    """Rank 0's BatchNorm statistics on every rank (one flat broadcast)."""
    if world <= 1:
        return
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.flatten() for b in bufs])
    dist.broadcast(flat, 0)
    for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(v.view_as(b))


def _open_live(live_dir: Path, history: list[dict[str, float]]):
    """A fresh dvclive folder holding one row per completed epoch of `history` (step = epoch index)."""
    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None)  # plain Live() would rewrite dvc.yaml
    for record in history:
        _log_epoch(live, record)
    return live


def _log_epoch(live, record: dict[str, float]) -> None:
    for key, value in record.items():
        if key != "epoch":
            live.log_metric(key, value)
    live.next_step()


@dataclass
class _Run:
    """What a run carries across steps and across a resume."""
    sums: Any  # float64 [5]: loss*n, correct, n, adversarial correct, adversarial n of the epoch so far
    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, dict[str, Any]] = field(  # per selection rule: the epoch it keeps so far and its weights
        default_factory=lambda: {rule: {"epoch": -1, "state": None} for rule in SELECTION_RULES})


def _restore_run(state_path: Path, fp: str, world: int, rank: int, model, opt, sched, rng, q) -> _Run:
    """Load a state of the same run (advmix.resume.load_state) into the objects; else a fresh _Run."""
    state = resume.load_state(state_path, version=STATE_VERSION, fp=fp, world=world, what="training state",
                              fix="delete it to start this run over")
    if state is None:
        return _Run(sums=torch.zeros(5, dtype=torch.float64))
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    mine = state["ranks"][rank]
    resume.restore_rngs(mine, rng)
    if q is not None:
        q.copy_(state["group_weights"])
    return _Run(sums=mine["sums"].clone(), epoch=int(state["epoch"]), step=int(state["step"]),
                seconds=float(state["seconds"]), history=list(state["history"]), best=state["best"])


def _attacked(x, y, idx, model, attack, bank, own, residual, G, cfg, rng, clean_ratio: float, amp):
    """The batch with a random share `1 - clean_ratio` replaced by the attack's version; (x, rows replaced).
    `own`: the W+ code of every train row; `residual`: x - G(w) of every train row (None: the attack synthesises
    it). When `own` is the bank itself, an example is never its own partner."""

    n_adv = 0 if attack is None else round((1.0 - clean_ratio) * len(idx))
    if not n_adv:
        return x, None
    sel = torch.randperm(len(idx), generator=rng)[:n_adv]
    sel_dev = sel.to(x.device)
    rows = idx[sel].to(x.device)
    in_bank = bank is not None and own is bank.w
    batch = Batch(x[sel_dev], y[sel_dev], w=None if own is None else own[rows], index=idx[sel] if in_bank else None,
                  residual=None if residual is None else residual[rows])
    with amp:
        x_adv, _ = attack(model, batch, bank, G, cfg, rng)
    x = x.clone()
    x[sel_dev] = x_adv.to(x.dtype)
    return x, sel


def _add_step(sums, loss, logits, y, sel) -> None:
    """One step's loss and accuracy into the epoch's running sums (see _Run.sums)."""
    with torch.no_grad():
        ok = (logits.argmax(1) == y).cpu()
        sums[0] += loss.item() * len(y)
        sums[1] += ok.sum().item()
        sums[2] += len(y)
        if sel is not None:
            sums[3] += ok[sel].sum().item()
            sums[4] += len(sel)


def _epoch_record(epoch: int, sums, val_metrics: dict[str, float], sched, world: int) -> dict[str, float]:
    """The epoch's row of the history: train loss and accuracy over every rank, val loss and accuracy, lr."""
    totals = sums.clone()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
    record = {"epoch": epoch, "train/loss": float(totals[0] / totals[2]), "train/acc": float(totals[1] / totals[2])}
    if totals[4] > 0:
        record["train/adv_acc"] = float(totals[3] / totals[4])
    record |= {"val/loss": val_metrics["loss"], "val/acc": val_metrics["acc"]}
    if "worst_group_acc" in val_metrics:
        record["val/worst_group_acc"] = val_metrics["worst_group_acc"]
    return record | {"lr": sched.get_last_lr()[0]}


@dataclass
class ClassifierRun:
    """What train_classifier returns (on every torchrun rank; rank 0 writes)."""

    model: Any  # the weights the default selection rule kept (CPU, eval mode)
    states: dict[str, dict]  # selection rule -> the state dict of the epoch it kept
    best_epochs: dict[str, int]  # selection rule -> the epoch it kept (0-based)
    last_state: dict  # the last epoch's weights (JTT's identification run reads them)
    config: dict[str, Any]  # model_config: what rebuilds the network
    history: list[dict[str, float]]  # per epoch: train and val loss and accuracy, lr
    epochs: int
    steps_per_epoch: int
    seconds: float  # of the whole run, resumed parts included
    images_per_s: float  # of this process's part of the run
    resumed_from: dict[str, int]  # {"epoch", "step"} a matching state let it start at
    rank: int
    world: int
    device: str
    jtt_errors: int | None = None  # JTT: the identification run's train errors, upsampled in this run
    jtt_first_seconds: float | None = None

    @property
    def best_epoch(self) -> int:
        """The default (label-free) rule's epoch."""
        return self.best_epochs[SELECTION_RULES[0]]

    @property
    def best_val_acc(self) -> float:
        return self.history[self.best_epoch]["val/acc"] if self.history else -1.0


def train_classifier(mode: str, train: Dataset, val: Dataset, c: TrainConfig, state_path: Path,
                     live_dir: Path | None, *, G=None, latents: np.ndarray | None = None,
                     partners: tuple[np.ndarray, np.ndarray] | None = None, epoch_rows: np.ndarray | None = None,
                     progress: Callable[[int, int, dict[str, float]], None] | None = None) -> ClassifierRun:
    """Train the classifier of one mode: the model of the label-free rule's epoch, the weights of every selection
    rule's epoch, and the run.

    `latents`: W+ codes of the train split, row i = train image i (randmix/advmix). `partners`: (codes, classes) of
    the partner bank under `mixing.bank: pool`; None: the train codes are the partners. `G`: the frozen generator
    (randmix/advmix), mixing the rows `c.attack.layers`. `epoch_rows`: the train rows that make one epoch, repeats
    allowed (JTT's upsampled set); None: every row once. `progress(done, total, stats)` is called after every
    step (rank 0 only); an exception raised from it stops training like a kill would. The training state lives
    at `state_path`; the dvclive folder at `live_dir` (rank 0 only; None: no logging).
    """

    # ---- Check the inputs; devices, ranks and the length of the run.
    if mode not in NAMES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {NAMES}")
    t, cfg = c.train, c.attack
    if mode in MIXING_MODES:
        if G is None or latents is None or not cfg.layers:
            raise ValueError(f"mode {mode} needs the generator, the train latents and the mixing layers")
        if len(latents) != len(train):
            raise LatentsError(f"train latents have {len(latents)} rows but the train split has {len(train)}")
    rank, world, device = rank_and_device(t.device, "train.device")
    if t.batch % world:
        raise ValueError(f"train.batch {t.batch} must be a multiple of the number of ranks {world}")
    rows = torch.arange(len(train)) if epoch_rows is None else torch.from_numpy(np.asarray(epoch_rows, np.int64))
    steps_per_epoch = len(rows) // t.batch
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {len(train)} images, fewer than one batch of {t.batch}")
    total = t.epochs * steps_per_epoch

    # ---- Model, optimiser, schedule and the attack's RNG (seeded the same on every rank).
    n_classes = int(train.info.get("n_classes", int(labels_of(train).max()) + 1))
    config = model_config(t, n_classes, train.images.shape[1])
    torch.manual_seed(c.seed)  # the same initial weights on every rank
    model = build_model(config["model"], n_classes, config["resolution"], config["width"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # several ranks: DDP's bucketed all-reduce, overlapped with the backward pass, averages the gradients; the
    # attacks and the evaluation call the bare model (no gradient sync), and BatchNorm buffers are rank 0's after
    # every step (_broadcast_buffers), so every rank evaluates and saves the same model
    forward = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    opt = build_optimizer(model, t, mode)
    warmup = round(t.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, t.schedule))
    rng = torch.Generator().manual_seed(c.seed * 1000 + 17 + rank)  # attack draws, per rank

    # ---- What the mode reads beyond images and labels: the generator and codes, or the group labels.
    bank = own = residual = None
    if mode in MIXING_MODES:
        if partners is None:  # the train split's own codes are the partners
            bank = LatentBank(torch.from_numpy(latents), labels_of(train), seed=c.seed).to(device)
            own = bank.w
        else:
            bank = LatentBank(torch.from_numpy(partners[0]), partners[1], seed=c.seed).to(device)
            own = torch.from_numpy(latents).to(device)
        G = G.to(device).eval().requires_grad_(False)
        if device.type == "cuda":
            G = G.to(memory_format=torch.channels_last)
        if cfg.residual and train.images.size * 4 <= RESIDUAL_BANK_BYTES:
            # x - G(w) is fixed per image (G is frozen): synthesised once here instead of in every attack, every
            # epoch (a RandMix step's generator work halves; AdvMix's falls by one pass of its K + 3S + 2)
            residual = residuals(G, train.images, own)
    attack = ATTACKS.get(mode)
    groups = q = adjustment = None
    if mode in GROUP_LABEL_MODES:
        if "group" not in train.manifest.columns:
            raise ValueError(f"mode {mode} needs group labels: the train manifest has no 'group' column")
        groups = torch.from_numpy(train.manifest["group"].to_numpy().astype(np.int64))
        n_groups = int(groups.max()) + 1
        q = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float32, device=device)
        if t.groupdro.adjustment > 0:
            sizes = torch.bincount(groups, minlength=n_groups).clamp(min=1).float()
            adjustment = (t.groupdro.adjustment / sizes.sqrt()).to(device)

    # ---- Resume a state of this very run (same fingerprint), or start at epoch 0.
    fp = fingerprint(mode, c, train, val, latents, epoch_rows)
    run = _restore_run(state_path, fp, world, rank, model, opt, sched, rng, q)
    resumed_from = {"epoch": run.epoch, "step": run.step}
    start_epoch, start_step, elapsed = run.epoch, run.step, run.seconds
    live = _open_live(live_dir, run.history) if live_dir is not None and rank == 0 else None
    amp = _amp(device)
    images = torch.from_numpy(np.ascontiguousarray(train.images))  # uint8, N x H x W x 3, converted per batch
    labels = labels_of(train)
    t0 = time.time() - elapsed
    last_save = time.time()

    def save(epoch: int, step: int) -> None:
        resume.save_state(state_path, {
            "mode": mode, "epoch": epoch, "step": step, "seconds": time.time() - t0, "model": model.state_dict(),
            "opt": opt.state_dict(), "sched": sched.state_dict(), "history": run.history, "best": run.best,
            "group_weights": None if q is None else q.detach().cpu().clone()},
            resume.rank_part(rng, sums=run.sums.clone()), version=STATE_VERSION, fp=fp, rank=rank, world=world)

    for epoch in range(start_epoch, t.epochs):
        perm = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(c.seed * 1000 + epoch))]
        model.train()
        for step in range(start_step if epoch == start_epoch else 0, steps_per_epoch):
            # ---- One step: this rank's share of the batch, part of it replaced by the mode's attack.
            idx = perm[step * t.batch:(step + 1) * t.batch][rank::world]
            x = _to_device(to_tensor(images[idx].numpy()), device)
            y = labels[idx].to(device)
            x, sel = _attacked(x, y, idx, model, attack, bank, own, residual, G, cfg, rng, t.clean_ratio, amp)
            model.train()
            with amp:
                logits = forward(x).float()
            if q is None:
                loss = F.cross_entropy(logits, y)
            else:
                loss = group_dro_loss(F.cross_entropy(logits, y, reduction="none"), groups[idx].to(device), q,
                                      t.groupdro.step_size, world, adjustment)
            if not torch.isfinite(loss):  # stop here: one NaN step leaves every weight NaN
                raise ValueError(f"train {mode}: the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; likely "
                                 f"non-finite images or W+ codes, or train.lr {t.lr} too high")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            _broadcast_buffers(model, world)
            _add_step(run.sums, loss, logits, y, sel)

            # ---- Progress, and the state every `train.checkpoint_minutes`.
            done = epoch * steps_per_epoch + step + 1
            if progress is not None and rank == 0:
                progress(done, total, {"epoch": epoch + 1, "loss": loss.item(), "lr": sched.get_last_lr()[0]})
            if step + 1 < steps_per_epoch and resume.save_due(last_save, t.checkpoint_minutes, world, device):
                save(epoch, step + 1)
                last_save = time.time()

        # ---- End of epoch: totals over ranks, validation, model selection, the state, then the log.
        record = _epoch_record(epoch, run.sums, score_split(model, val, t.eval_batch, device, rank, world), sched, world)
        run.history.append(record)
        for rule in SELECTION_RULES:
            if select_epoch(run.history, rule) == epoch:
                run.best[rule] = {"epoch": epoch,
                                  "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        run.sums.zero_()
        save(epoch + 1, 0)
        last_save = time.time()
        if live is not None:
            _log_epoch(live, record)

    # ---- Done: the best val epoch's weights on the CPU; the state file goes.
    if live is not None:
        live.end()
    seconds = time.time() - t0
    last_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    states = {rule: b["state"] if b["state"] is not None else last_state for rule, b in run.best.items()}
    final = build_model(config["model"], n_classes, config["resolution"], config["width"])
    final.load_state_dict(states[SELECTION_RULES[0]])
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0 and state_path.is_file():
        state_path.unlink()
    best_epochs = {rule: b["epoch"] for rule, b in run.best.items()}
    return ClassifierRun(
        model=final.eval(), states=states, best_epochs=best_epochs, last_state=last_state, config=config,
        history=copy.deepcopy(run.history), epochs=t.epochs, steps_per_epoch=steps_per_epoch, seconds=seconds,
        images_per_s=(total - start_epoch * steps_per_epoch - start_step) * t.batch / max(1e-9, seconds - elapsed),
        resumed_from=resumed_from, rank=rank, world=world, device=str(device))


def jtt_epoch_rows(wrong: np.ndarray, upweight: int) -> np.ndarray:
    """JTT's upsampled train set: every row once, and each row in the error set `upweight - 1` more times."""
    errors = np.flatnonzero(wrong)
    return np.concatenate([np.arange(len(wrong)), np.repeat(errors, upweight - 1)]).astype(np.int64)


def train_errors(model, ds: Dataset, batch: int, device) -> np.ndarray:
    """True where `model` misclassifies a row of `ds`."""

    y = labels_of(ds)
    wrong = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(ds), batch):
            x = _to_device(to_tensor(ds.images[start:start + batch]), device)
            wrong.append((model(x).argmax(1).cpu() != y[start:start + batch]).numpy())
    return np.concatenate(wrong) if wrong else np.zeros(0, dtype=bool)


def train_jtt(train: Dataset, val: Dataset, c: TrainConfig, state_path: Path, live_dir: Path | None, *,
              progress: Callable[[int, int, dict[str, float]], None] | None = None) -> ClassifierRun:
    """JTT: an identification run (nominal, `train.jtt.epochs_first` epochs, its last weights), then the final
    run on train with the identification run's errors upsampled. No group label is read. Each run resumes."""

    j = c.train.jtt
    first_c = replace(c, train=c.train.model_copy(update={"epochs": j.epochs_first}))
    first_state = state_path.with_name(state_path.stem + "-identification" + state_path.suffix)
    first = train_classifier("nominal", train, val, first_c, first_state, None)
    m = first.config
    model = build_model(m["model"], m["n_classes"], m["resolution"], m["width"])
    model.load_state_dict(first.last_state)
    wrong = train_errors(model, train, c.train.eval_batch, torch.device(first.device))
    run = train_classifier("jtt", train, val, c, state_path, live_dir, epoch_rows=jtt_epoch_rows(wrong, j.upweight),
                           progress=progress)
    return replace(run, jtt_errors=int(wrong.sum()), jtt_first_seconds=first.seconds)
