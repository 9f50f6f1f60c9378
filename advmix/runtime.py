"""Where training runs: the device, and the torchrun process group shared by GAN and classifier training.

Gradients are averaged by hand (one flat all-reduce) rather than through DDP, as in
stylegan2-ada-pytorch: it keeps double-backward penalties (R1) and attacks inside the step simple.
"""

from __future__ import annotations

import os
from typing import Any


def pick_device(choice: str, key: str = "device"):
    """torch.device for `auto` | `cpu` | `cuda`; `key` names the param in the error."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is available")
    return torch.device("cuda" if choice in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, initialising the process group once; (0, 1) otherwise."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def average_grads(module, world: int) -> None:
    """All-reduce the gradients of `module` (one flat buffer) and divide by the world size."""
    import torch
    import torch.distributed as dist

    if world <= 1:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def all_ranks(obj: Any, world: int) -> list:
    """`obj` from every rank, in rank order (e.g. RNG states for a resumable checkpoint)."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    everyone: list = [None] * world
    dist.all_gather_object(everyone, obj)
    return everyone
