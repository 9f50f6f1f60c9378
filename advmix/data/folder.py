"""A local folder of images described by one CSV: the Waterbirds layout of the Group DRO code.

`data.folder.root` holds `metadata.csv` and the images. Each row names an image (`img_filename`, a path
relative to root), its class (`y`), its spurious attribute (`place`) and its partition (`split`:
0/1/2 or train/val/test); `data.folder.*` renames these columns. Labels and spurious values may be
integers or strings: each column's sorted distinct values become 0..k-1, and the spurious column needs
as many values as there are classes (agreement means equal indices). With a split column, train and
val are drawn from their own partitions and the three test splits from the test partition, like
celeba.py; without one (`split: null` or a column the file lacks) every row may go to any split.
The pool is drawn without looking at labels from the rows no labelled split took (train partition only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from advmix.data.celeba import PARTITION, _square_resize
from advmix.data.splits import draw_rows
from advmix.data.store import BASE_COLUMNS, Dataset, DatasetError
from advmix.groups import group_of
from advmix.params import SPLITS, DataParams, FolderParams

SPLIT_CODES = {"0": 0, "1": 1, "2": 2, "train": 0, "val": 1, "test": 2}


def read_metadata(cfg: FolderParams) -> tuple[pd.DataFrame, Path]:
    """The metadata table with the configured columns checked, and its path."""
    if cfg.root is None:
        raise DatasetError("data.folder.root: not set; point it at a folder holding the images and "
                           f"{cfg.metadata}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found (data.folder.root)")
    path = root / cfg.metadata
    if not path.is_file():
        raise DatasetError(f"{path}: missing; a folder dataset needs this CSV with columns {cfg.file}, "
                           f"{cfg.label}, {cfg.spurious} (set data.folder.metadata for another name)")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    if frame.empty:
        raise DatasetError(f"{path}: no rows, only a header; list one image per row")
    for key in ("file", "label", "spurious"):
        column = getattr(cfg, key)
        if column not in frame.columns:
            raise DatasetError(f"data.folder.{key}: {column!r} is not a column of {path} "
                               f"(have {', '.join(map(str, frame.columns))})")
    if cfg.label == cfg.spurious:
        raise DatasetError(f"data.folder.spurious: {cfg.spurious!r} is also the label column of {path}; "
                           "pick another column")
    if cfg.spurious in BASE_COLUMNS:
        raise DatasetError(f"data.folder.spurious: a column named {cfg.spurious!r} would clash with the "
                           f"manifest's own {cfg.spurious!r}; rename it in {path}")
    for column in (cfg.file, cfg.label, cfg.spurious):
        if frame[column].isna().any():
            raise DatasetError(f"{path}: column {column!r} has {int(frame[column].isna().sum())} empty cell(s); "
                               "fill or drop those rows")
    repeated = frame[frame[cfg.file].duplicated(keep=False)]
    if len(repeated):  # the same image under two labels (or twice in a split) would be a wrong or a leaked example
        file = repeated[cfg.file].iloc[0]
        rows = repeated[repeated[cfg.file] == file]
        lines = " and ".join(str(i + 2) for i in rows.index[:2])  # line 1 is the header
        values = ", ".join(f"{cfg.label}={v!r}" for v in rows[cfg.label].iloc[:2])
        raise DatasetError(f"{path}: {file!r} is listed on lines {lines} ({values}); list each image once "
                           f"({repeated[cfg.file].nunique()} image(s) are listed more than once)")
    return frame, path


def _codes(column: pd.Series) -> tuple[np.ndarray, list]:
    """Index of each value among the column's sorted distinct values, and those values (JSON-safe)."""
    values = sorted(column.unique())
    index = column.map({v: i for i, v in enumerate(values)}).to_numpy(dtype=int)
    return index, [v.item() if isinstance(v, np.generic) else v for v in values]


def _partitions(frame: pd.DataFrame, cfg: FolderParams, path: Path) -> np.ndarray | None:
    """0/1/2 per row (train/val/test), or None when there is no split column."""
    if cfg.split is None or cfg.split not in frame.columns:
        return None
    text = frame[cfg.split].astype(str).str.strip().str.lower()
    codes = text.map(SPLIT_CODES)
    if codes.isna().any():
        bad = sorted(set(frame[cfg.split][codes.isna()].astype(str)))
        raise DatasetError(f"data.folder.split: column {cfg.split!r} of {path} has value(s) {', '.join(bad[:5])}; "
                           "expected 0/1/2 or train/val/test (or set data.folder.split: null to draw every split "
                           "from all rows)")
    return codes.to_numpy(dtype=int)


def build(params: DataParams, seed: int, progress=None) -> Dataset:
    cfg = params.folder
    frame, path = read_metadata(cfg)
    label, classes = _codes(frame[cfg.label])
    spurious, spurious_values = _codes(frame[cfg.spurious])
    k = len(classes)
    if k < 2:
        raise DatasetError(f"data.folder.label: column {cfg.label!r} of {path} has one value ({classes[0]!r}); "
                           "a classifier needs at least 2 classes")
    if len(spurious_values) != k:
        raise DatasetError(f"data.folder.spurious: column {cfg.spurious!r} of {path} has {len(spurious_values)} "
                           f"values {spurious_values} but {cfg.label!r} has {k} classes {classes}; agreement needs "
                           "as many spurious values as classes")
    partitions = _partitions(frame, cfg, path)
    has_split = partitions is not None
    if not has_split:  # one partition: every split draws from every row
        partitions = np.zeros(len(frame), dtype=int)
    part_of = PARTITION if has_split else dict.fromkeys(SPLITS, 0)

    def shortage(split: str, need: int, found: int, cell: tuple[int, int] | None) -> str:
        if cell is None:
            return (f"data.sizes.pool: needs {need} unused {'train-partition ' * has_split}images in {path}, "
                    f"found {found}; lower data.sizes.pool")
        within = f" in partition {part_of[split]}" if has_split else ""
        return (f"data.sizes.{split}: needs {need} images with {cfg.label}={classes[cell[0]]}, "
                f"{cfg.spurious}={spurious_values[cell[1]]}{within} of {path}, found {found}; lower the size or rho")

    chosen = draw_rows(label, spurious, partitions, part_of, params.sizes.as_dict(), params.rho, k,
                       np.random.default_rng([seed, 5]), shortage)

    files = frame[cfg.file].astype(str).to_numpy()
    images = np.empty((len(chosen), params.resolution, params.resolution, 3), dtype=np.uint8)
    for row, (_, i) in enumerate(chosen):
        image_path = path.parent / files[i]
        if not image_path.is_file():
            raise DatasetError(f"{image_path}: image file missing (listed in {path}, column {cfg.file!r})")
        try:
            with Image.open(image_path) as img:
                images[row] = _square_resize(img, params.resolution)
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files included
            raise DatasetError(f"{image_path}: cannot read image ({exc})") from None
        except Image.DecompressionBombError as exc:  # PIL refuses to decode it: a corrupt size field, or a huge image
            raise DatasetError(f"{image_path}: too large to read ({str(exc).split(', could be')[0]}); "
                               "downscale it") from None
        if progress is not None:
            progress(1)
    idx = [i for _, i in chosen]
    manifest = pd.DataFrame({"id": files[idx], "split": [s for s, _ in chosen], "label": label[idx],
                             cfg.spurious: spurious[idx]})
    manifest["group"] = group_of(manifest["label"], manifest[cfg.spurious], k)
    info = {"name": "folder", "resolution": params.resolution, "rho": params.rho, "n_classes": k,
            "classes": [str(c) for c in classes], "spurious": cfg.spurious,
            "attributes": {cfg.spurious: list(range(k))},
            "values": {cfg.label: classes, cfg.spurious: spurious_values}, "root": str(cfg.root),
            "mirror_invariant": cfg.mirror_invariant}
    return Dataset(images, manifest, info)
