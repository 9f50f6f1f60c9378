"""A local CelebA folder in the official layout, read through torchvision (download=False).

`data.celeba.root` is either the folder that holds `celeba/` (torchvision's convention) or the
folder with the files themselves: `img_align_celeba/`, `list_attr_celeba.txt`,
`list_eval_partition.txt`. The identity, bbox and landmark lists are optional here.
Train, val and test_iid are subsampled from the official partitions so that the spurious
attribute agrees with the target at rate rho; test_balanced and test_flipped come from the
official test partition, disjoint from test_iid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.datasets import CelebA
from torchvision.datasets.celeba import CSV

from advmix.data.splits import draw_rows
from advmix.data.store import Dataset, DatasetError
from advmix.groups import group_of
from advmix.params import DataParams

REQUIRED = ("list_attr_celeba.txt", "list_eval_partition.txt")
OPTIONAL = ("identity_CelebA.txt", "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt")
PARTITION = {"train": 0, "val": 1, "test_iid": 2, "test_balanced": 2, "test_flipped": 2}


def locate(root: Path | None) -> tuple[Path, str]:
    """(torchvision root, base folder) for a user's CelebA path."""
    if root is None:
        raise DatasetError("data.celeba.root: not set; point it at a local CelebA folder (nothing is downloaded)")
    root = Path(root).expanduser()
    for base in (root / "celeba", root):
        if (base / REQUIRED[0]).exists() or (base / "img_align_celeba").exists():
            return base.parent, base.name
    raise DatasetError(f"{root}: no CelebA files found; expected img_align_celeba/ and {', '.join(REQUIRED)} "
                       f"in {root} or {root / 'celeba'}")


def open_celeba(root: Path | None):
    """torchvision's CelebA over a local folder, with errors that name the file at fault."""
    tv_root, base = locate(root)
    folder = tv_root / base

    class LocalCelebA(CelebA):
        base_folder = base

        def _check_integrity(self) -> bool:
            # The MD5s in torchvision match only the full official files; a user's subset or a test
            # folder is still valid, so check presence and format instead.
            for name in REQUIRED:
                if not (folder / name).is_file():
                    raise DatasetError(f"{folder / name}: missing (a CelebA folder needs {', '.join(REQUIRED)})")
            if not (folder / "img_align_celeba").is_dir():
                raise DatasetError(f"{folder / 'img_align_celeba'}: missing image folder")
            return True

        def _load_csv(self, filename: str, header: int | None = None) -> CSV:
            path = folder / filename
            if filename in OPTIONAL and not path.is_file():
                ids = super()._load_csv("list_eval_partition.txt").index
                return CSV([], ids, torch.zeros((len(ids), 1), dtype=torch.long))
            try:
                return super()._load_csv(filename, header)
            except (ValueError, IndexError) as exc:
                raise DatasetError(f"{path}: malformed ({exc}); expected the official format: "
                                   + ("a count line, a line of attribute names, then '<file> 1 -1 ...' rows"
                                      if header else "'<file> <integer>' rows")) from None

    return LocalCelebA(str(tv_root), split="all", target_type="attr", download=False)


def _square_resize(img, resolution: int) -> np.ndarray:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(img.resize((resolution, resolution), Image.LANCZOS), dtype=np.uint8)


def build(params: DataParams, seed: int, progress=None) -> Dataset:
    cfg = params.celeba
    ds = open_celeba(cfg.root)
    names = list(ds.attr_names)
    for key, value in (("target", cfg.target), ("spurious", cfg.spurious)):
        if value not in names:
            raise DatasetError(f"data.celeba.{key}: {value!r} is not an attribute of list_attr_celeba.txt "
                               f"(have {', '.join(names)})")
    attrs = pd.DataFrame(ds.attr.numpy(), columns=[n.lower() for n in names])
    partitions = ds._load_csv("list_eval_partition.txt").data.numpy()[:, 0]
    label = attrs[cfg.target.lower()].to_numpy()
    spurious = attrs[cfg.spurious.lower()].to_numpy()

    def shortage(split: str, need: int, found: int, cell: tuple[int, int] | None) -> str:
        if cell is None:  # the pool: CelebA's own mix of attributes, which validate checks is near independence
            return (f"data.sizes.pool: needs {need} unused train-partition images in {ds.root}, found {found}; "
                    "lower data.sizes.pool")
        return (f"data.sizes.{split}: needs {need} images with {cfg.target}={cell[0]}, {cfg.spurious}={cell[1]} "
                f"in partition {PARTITION[split]} of {ds.root}, found {found}; lower the size or rho")

    chosen = draw_rows(label, spurious, partitions, PARTITION, params.sizes.as_dict(), params.rho, 2,
                       np.random.default_rng([seed, 4]), shortage)

    images = np.empty((len(chosen), params.resolution, params.resolution, 3), dtype=np.uint8)
    for row, (_, i) in enumerate(chosen):
        path = Path(ds.root) / ds.base_folder / "img_align_celeba" / ds.filename[i]
        try:
            img, _ = ds[i]
        except (FileNotFoundError, OSError) as exc:
            raise DatasetError(f"{path}: cannot read image ({exc})") from None
        images[row] = _square_resize(img, params.resolution)
        if progress is not None:
            progress(1)
    idx = [i for _, i in chosen]
    manifest = attrs.iloc[idx].reset_index(drop=True)
    manifest.insert(0, "label", label[idx])
    manifest.insert(0, "split", [s for s, _ in chosen])
    manifest.insert(0, "id", [ds.filename[i] for i in idx])
    manifest["group"] = group_of(manifest["label"], spurious[idx], 2)
    info = {"name": "celeba", "resolution": params.resolution, "rho": params.rho, "n_classes": 2,
            "classes": [f"not_{cfg.target.lower()}", cfg.target.lower()], "spurious": cfg.spurious.lower(),
            "target": cfg.target, "root": str(cfg.root),
            "attributes": {c: [0, 1] for c in attrs.columns if c != cfg.target.lower()}, "mirror_invariant": True}
    return Dataset(images, manifest, info)
