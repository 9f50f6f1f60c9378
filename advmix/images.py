"""Image conversion, in one place: uint8 N x H x W x 3 arrays (datasets, PNGs) and float N x 3 x H x W tensors in
[-1, 1] (the generator's range, what every network here reads). A leaf module: it imports no advmix."""

from __future__ import annotations

import numpy as np
import torch


def from_uint8(x8):
    """A uint8 N x 3 x H x W tensor -> float in [-1, 1]."""
    return x8.float().div(127.5).sub(1.0)


def to_tensor(images: np.ndarray):
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return from_uint8(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def to_uint8(images) -> np.ndarray:
    """A [-1, 1] tensor N x 3 x H x W (clamped, rounded), or uint8 N x H x W x 3 as it is, as uint8 N x H x W x 3."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return images
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return x.permute(0, 2, 3, 1).numpy()
