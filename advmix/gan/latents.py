"""The W+ codes of the labelled splits on disk (data/latents/): one <split>.npy per split in its manifest's row
order, and info.json with each split's ids and codes digests and the generator that made them, so that codes
written for other rows, edited codes or codes of another generator are refused with a line that names the file."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advmix.files import atomic_folder
from advmix.paths import LATENTS_INFO


class LatentsError(ValueError):
    """A latents file that does not fit the manifest it is read against; the message names the file."""




def ids_digest(manifest: pd.DataFrame) -> str:
    """A hash of a split's ids in order: latents written for another order or another dataset do not load."""
    return hashlib.sha1("\n".join(map(str, manifest["id"].tolist())).encode()).hexdigest()


def codes_digest(codes: np.ndarray) -> str:
    """A hash of a split's codes as float32: a permuted, edited or foreign array beside this info.json is refused."""
    return hashlib.sha1(np.ascontiguousarray(codes, dtype=np.float32).tobytes()).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha1 of a file's bytes (the generator that made a latent bank)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_latents(folder: str | os.PathLike[str], latents: dict[str, np.ndarray], manifests: dict[str, pd.DataFrame],
                 extra: dict[str, Any] | None = None) -> Path:
    """Write <split>.npy for every split plus info.json into a temp folder beside `folder`, then swap it in."""
    folder = Path(folder)
    info: dict[str, Any] = {"splits": {}, **(extra or {})}
    for name, arr in latents.items():
        m = manifests[name]
        if arr.ndim != 3 or len(arr) != len(m):
            raise LatentsError(f"{folder / (name + '.npy')}: {arr.shape} codes for {len(m)} manifest rows")
        info["splits"][name] = {"rows": len(arr), "shape": list(arr.shape), "ids_sha1": ids_digest(m),
                                "codes_sha1": codes_digest(arr)}
    with atomic_folder(folder) as tmp:
        for name, arr in latents.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr, dtype=np.float32))
            (tmp / f"{name}.npy").write_bytes(buf.getvalue())
        (tmp / LATENTS_INFO.name).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def load_latents(path: str | os.PathLike[str], manifest_split: pd.DataFrame, n_latent: int | None = None,
                 style_dim: int | None = None, generator_sha1: str | None = None,
                 hint: str = "(run `advmix extract` to rewrite data/latents)") -> np.ndarray:
    """Read a split's W+ codes and check them against that split's manifest (and G's W+ shape, when given).

    Raises LatentsError naming the file and what is wrong: the shape; NaN or Inf; or what info.json (written beside
    the arrays) reveals: rows written for other ids or another order, codes that are not the ones written, or
    another generator than `generator_sha1` (the file the caller will mix with).
    """
    path = Path(path)
    if not path.is_file():
        raise LatentsError(f"{path}: latents file not found {hint}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise LatentsError(f"{path}: not a numpy array file ({exc}) {hint}") from None
    found = tuple(arr.shape)
    expected = (len(manifest_split),
                n_latent if n_latent is not None else (found[1] if arr.ndim == 3 else "n_latent"),
                style_dim if style_dim is not None else (found[2] if arr.ndim == 3 else "style_dim"))
    if arr.ndim != 3 or found != expected:
        raise LatentsError(f"{path}: expected shape {expected} (rows = manifest rows of the split) but found "
                           f"{found} {hint}")
    bad = ~np.isfinite(arr).all(axis=(1, 2))
    if bad.any():
        raise LatentsError(f"{path}: {int(bad.sum())} row(s) hold NaN or Inf (the first: row {int(np.argmax(bad))}) "
                           f"{hint}")
    info_path = path.with_name(LATENTS_INFO.name)
    if info_path.is_file():
        entry = json.loads(info_path.read_text()).get("splits", {}).get(path.stem)
        if entry is not None and "id" in manifest_split.columns and entry.get("ids_sha1") != ids_digest(
                manifest_split):
            raise LatentsError(f"{path}: shape {found} matches but its rows were written for other ids or another "
                               f"order than this manifest (see {info_path}) {hint}")
        if entry is not None and "codes_sha1" in entry and entry["codes_sha1"] != codes_digest(arr):
            raise LatentsError(f"{path}: its codes are not the ones {info_path} records (edited, permuted or copied "
                               f"from another run) {hint}")
        made_by = json.loads(info_path.read_text()).get("generator_sha1")
        if generator_sha1 is not None and made_by is not None and made_by != generator_sha1:
            raise LatentsError(f"{path}: the codes were made by another generator than the current one (see "
                               f"{info_path}) {hint}")
    return arr.astype(np.float32, copy=False)
