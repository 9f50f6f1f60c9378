"""The on-disk dataset format: images.npy (uint8, N x H x W x 3), manifest.csv, info.json.

Row i of images.npy is the image of manifest row i. info.json says what the columns mean
(classes, attributes, which attribute is spurious) so later stages need no dataset-specific code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advmix.files import atomic_folder
from advmix.params import ALL_SPLITS
from advmix.paths import DATASET_IMAGES, DATASET_INFO, DATASET_MANIFEST

BASE_COLUMNS = ("id", "split", "label", "group")


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message names the file and what was expected."""


@dataclass
class Dataset:
    images: np.ndarray  # uint8, N x H x W x 3
    manifest: pd.DataFrame
    info: dict[str, Any]  # name, n_classes, attributes {name: [values]}, spurious, resolution, rho

    def split(self, name: str) -> Dataset:
        return self.rows((self.manifest["split"] == name).to_numpy())

    def rows(self, which: np.ndarray | slice) -> Dataset:
        """The rows a boolean mask or a slice selects."""
        return Dataset(self.images[which], self.manifest[which].reset_index(drop=True), self.info)

    def __len__(self) -> int:
        return len(self.manifest)


def mirror_invariant(info: dict[str, Any]) -> bool:
    """Whether a left-right mirrored image shows the same thing (faces: yes; digits: no). Every flip
    augmentation asks this; datasets written before the key existed were all faces."""
    return bool(info.get("mirror_invariant", True))


def image_digests(images: np.ndarray) -> list[str]:
    """sha1 of each image's bytes: the manifest's `image_sha1`, which ties a row to its image."""
    return [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def save_dataset(folder: Path, ds: Dataset) -> None:
    """Write the three files into a temp folder beside `folder`, then swap it in; the manifest gains `image_sha1`."""
    check_consistent(ds, Path(folder))
    manifest = ds.manifest.assign(image_sha1=image_digests(ds.images))
    with atomic_folder(folder) as tmp:
        np.save(tmp / DATASET_IMAGES, np.ascontiguousarray(ds.images))
        manifest.to_csv(tmp / DATASET_MANIFEST, index=False)
        (tmp / DATASET_INFO).write_text(json.dumps(ds.info, indent=2) + "\n")


def dataset_digest(folder: Path) -> str:
    """sha1 of a dataset folder's three files: what `advmix validate` validated, so a stage can tell it is stale."""
    h = hashlib.sha1()
    for name in (DATASET_IMAGES, DATASET_MANIFEST, DATASET_INFO):
        with open(Path(folder) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def load_dataset(folder: Path) -> Dataset:
    folder = Path(folder)
    paths = {n: folder / n for n in (DATASET_IMAGES, DATASET_MANIFEST, DATASET_INFO)}
    for path in paths.values():
        if not path.is_file():
            raise DatasetError(f"{path}: missing; a dataset folder holds images.npy, manifest.csv and info.json "
                               "(run `advmix prepare`)")
    try:
        images = np.load(paths[DATASET_IMAGES], allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{paths['images.npy']}: not a numpy array file ({exc})") from None
    try:
        manifest = pd.read_csv(paths[DATASET_MANIFEST])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{paths['manifest.csv']}: not a readable CSV ({exc})") from None
    try:
        info = json.loads(paths[DATASET_INFO].read_text())
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
