"""Image grids and small plots, written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from advmix.files import atomic_write_bytes
from advmix.images import to_uint8


def grid(images, ncol: int, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile images row by row; blank cells are white."""
    imgs = to_uint8(images)
    n, h, w, _ = imgs.shape
    nrow = -(-n // ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out.repeat(scale, 0).repeat(scale, 1) if scale > 1 else out


def save_png(array: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())
