"""The on-disk dataset format: images.npy (uint8, N x H x W x 3), manifest.csv, info.json.

Row i of images.npy is the image of manifest row i. info.json says what the columns mean
(classes, attributes, which attribute is spurious) so later stages need no dataset-specific code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advmix.params import ALL_SPLITS

BASE_COLUMNS = ("id", "split", "label", "group")


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message names the file and what was expected."""


@dataclass
class Dataset:
    images: np.ndarray  # uint8, N x H x W x 3
    manifest: pd.DataFrame
    info: dict[str, Any]  # name, n_classes, attributes {name: [values]}, spurious, resolution, rho

    def split(self, name: str) -> Dataset:
        mask = (self.manifest["split"] == name).to_numpy()
        return Dataset(self.images[mask], self.manifest[mask].reset_index(drop=True), self.info)

    def __len__(self) -> int:
        return len(self.manifest)


def mirror_invariant(info: dict[str, Any]) -> bool:
    """Whether a left-right mirrored image shows the same thing (faces: yes; digits: no). Every flip
    augmentation asks this; datasets written before the key existed were all faces."""
    return bool(info.get("mirror_invariant", True))


def group_of(label: np.ndarray, spurious: np.ndarray, n_spurious: int) -> np.ndarray:
    """Group id of (label, spurious value): the unit of worst-group accuracy."""
    return np.asarray(label) * n_spurious + np.asarray(spurious)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename: readers see the old file or the new one.

    The file gets the mode a plain open() would give (mkstemp's own is 0600), so a served report is readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (every checkpoint and training state goes through here)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temp folder beside `folder`; on success it replaces `folder` whole, on failure it vanishes."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tmp.chmod(0o777 & ~_umask())  # the mode of a plain mkdir, not mkdtemp's 0700
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def image_digests(images: np.ndarray) -> list[str]:
    """sha1 of each image's bytes: the manifest's `image_sha1`, which ties a row to its image."""
    return [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def save_dataset(folder: Path, ds: Dataset) -> None:
    """Write the three files into a temp folder beside `folder`, then swap it in; the manifest gains `image_sha1`."""
    check_consistent(ds, Path(folder))
    manifest = ds.manifest.assign(image_sha1=image_digests(ds.images))
    with atomic_folder(folder) as tmp:
        np.save(tmp / "images.npy", np.ascontiguousarray(ds.images))
        manifest.to_csv(tmp / "manifest.csv", index=False)
        (tmp / "info.json").write_text(json.dumps(ds.info, indent=2) + "\n")


def dataset_digest(folder: Path) -> str:
    """sha1 of a dataset folder's three files: what `advmix validate` validated, so a stage can tell it is stale."""
    h = hashlib.sha1()
    for name in ("images.npy", "manifest.csv", "info.json"):
        with open(Path(folder) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def load_dataset(folder: Path) -> Dataset:
    folder = Path(folder)
    paths = {n: folder / n for n in ("images.npy", "manifest.csv", "info.json")}
    for path in paths.values():
        if not path.is_file():
            raise DatasetError(f"{path}: missing; a dataset folder holds images.npy, manifest.csv and info.json "
                               "(run `advmix prepare`)")
    try:
        images = np.load(paths["images.npy"], allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{paths['images.npy']}: not a numpy array file ({exc})") from None
    try:
        manifest = pd.read_csv(paths["manifest.csv"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{paths['manifest.csv']}: not a readable CSV ({exc})") from None
    try:
        info = json.loads(paths["info.json"].read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{paths['info.json']}: not valid JSON ({exc})") from None
    ds = Dataset(images, manifest, info)
    check_consistent(ds, folder)
    return ds


def check_consistent(ds: Dataset, where: Path) -> None:
    """Shape-level checks that every reader relies on. Content checks belong to `advmix validate`."""
    imgs = ds.images
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
        raise DatasetError(f"{where}/images.npy: expected uint8 N x H x W x 3, got {imgs.dtype} {imgs.shape}")
    if len(imgs) != len(ds.manifest):
        raise DatasetError(f"{where}: images.npy has {len(imgs)} rows but manifest.csv has {len(ds.manifest)}")
    missing = [c for c in ("id", "split") if c not in ds.manifest.columns]
    if missing:
        raise DatasetError(f"{where}/manifest.csv: missing column(s) {missing}")
    unknown = sorted(set(ds.manifest["split"]) - set(ALL_SPLITS))
    if unknown:
        raise DatasetError(f"{where}/manifest.csv: unknown split(s) {unknown}; expected {list(ALL_SPLITS)}")
