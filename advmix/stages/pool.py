"""pool: the validated dataset's unlabelled pool as a dataset of its own, data/pool/, which the probe, the generator
and the encoder learn from.

A stage of its own so that DVC sees what those three read. The builders draw the pool from a random stream of its
own, independent of rho, the spurious attribute and the labelled sizes; this stage keeps only what belongs to the
pool (no group column, no rho or spurious attribute in info.json). So a variant with another spurious attribute
or rho rewrites the same bytes here, and `dvc repro` skips the probe, the generator and the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from advmix.inputs.data import dataset
from advmix.stages import Progress, StageError, no_progress

# what describes the labelled splits only: the pool must not change when they do
LABELLED_ONLY_COLUMNS = ("group",)
LABELLED_ONLY_INFO = ("rho", "spurious")


@dataclass
class Pooled:
    folder: Path
    images: int

    def summary(self) -> str:
        return f"wrote {self.folder}: the {self.images} unlabelled pool images"


def run(p, progress: Progress = no_progress) -> Pooled:
    from advmix import paths
    from advmix.data import save_dataset
    from advmix.data.store import Dataset
    from advmix.params import POOL

    part = dataset(p).split(POOL)
    if not len(part):
        raise StageError("data.sizes.pool: 0; the probe, the generator and the encoder learn from the unlabelled "
                         "pool: set it above 0 and rerun `advmix prepare`")
    manifest = part.manifest.drop(columns=[*LABELLED_ONLY_COLUMNS, "image_sha1"], errors="ignore")
    info = {k: v for k, v in part.info.items() if k not in LABELLED_ONLY_INFO}
    save_dataset(paths.POOL_DIR, Dataset(part.images, manifest, info))
    return Pooled(paths.POOL_DIR, len(part))
