"""Checkpoint and resume, shared by the two trainers (advmix/classifier_training.py's classifier, advmix/gan/training.py's GAN).

A trainer writes its whole state to one file, atomically, now and then; a rerun resumes that state only when it is
of the very same run: the same layout (the trainer's STATE_VERSION), the same fingerprint (a hash of the inputs the
trainer declares: params, seed, data) and the same number of ranks. The state holds, besides what the trainer puts
in, every rank's own part (its RNG states), so a resumed multi-process run continues each rank's stream.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advmix.files import atomic_torch_save, read_torch
from advmix.runtime import all_ranks


def fingerprint(spec: Any, **arrays: np.ndarray | None) -> str:
    """A hash of what a resumable state must match: `spec` (JSON-able: params, settings, seed) and each array's
    name, dtype, shape and bytes (None: not part of this run)."""
    h = hashlib.sha1(json.dumps(spec, sort_keys=True).encode())
    for name, array in arrays.items():
        if array is None:
            continue
        array = np.ascontiguousarray(array)
        h.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        h.update(hashlib.sha1(array).digest())
    return h.hexdigest()


def load_state(path: Path, *, version: int, fp: str, world: int, what: str, fix: str) -> dict[str, Any] | None:
    """The state at `path` when it is of this run (layout `version`, fingerprint `fp`, `world` ranks); else None.

    Read with weights_only (advmix.files.read_torch): a broken file raises BrokenFileError naming `what` and `fix`.
    """
    if not path.is_file():
        return None
    state = read_torch(path, what, fix)
    if not (isinstance(state, dict) and state.get("version") == version and state.get("fingerprint") == fp
            and state.get("world") == world):
        return None
    return state


def rank_part(gen: torch.Generator, **extra: Any) -> dict[str, Any]:
    """This rank's part of a state: its RNG states (`gen`'s and torch's global one) and `extra`."""
    return {"rng": gen.get_state(), "torch_rng": torch.get_rng_state(), **extra}


def restore_rngs(part: dict[str, Any], gen: torch.Generator) -> None:
    """Set `gen` and torch's global RNG to the states of a rank's part (see rank_part)."""
    gen.set_state(part["rng"])
    torch.set_rng_state(part["torch_rng"])


def save_state(path: Path, state: dict[str, Any], part: dict[str, Any], *, version: int, fp: str, rank: int,
               world: int) -> None:
    """Every rank calls it (a collective): `state` with every rank's `part` (state["ranks"], in rank order), the
    layout `version`, the fingerprint and the world size, written atomically by rank 0."""
    ranks = all_ranks(part, world)
    if rank == 0:
        atomic_torch_save({"version": version, "fingerprint": fp, "world": world, **state, "ranks": ranks}, path)


def save_due(last_save: float, minutes: float, world: int, device: torch.device) -> bool:
    """Whether `minutes` have passed since `last_save` (a time.time()); by rank 0's clock, so every rank agrees
    (a save is a collective)."""
    due = time.time() - last_save > minutes * 60
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([float(due)], device=device if device.type == "cuda" else "cpu")
        dist.broadcast(flag, 0)
        due = bool(flag.item())
    return due
