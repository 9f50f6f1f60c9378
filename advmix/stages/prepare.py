"""prepare: build the dataset named by `data.name` into data/<name>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from advmix.stages import Progress, StageError, no_progress


@dataclass
class Prepared:
    folder: Path
    images: int
    shape: tuple[int, ...]  # one image: height, width, channels
    counts: dict[str, int]  # images per split

    def summary(self) -> str:
        return f"wrote {self.folder}: {self.images} images {self.shape} {self.counts}"


def run(p, progress: Progress = no_progress) -> Prepared:
    from advmix import paths
    from advmix.data import DatasetError, save_dataset
    from advmix.data.build import build_dataset

    out = paths.dataset_dir(p.data.name)
    with progress(f"prepare {p.data.name}", sum(p.data.sizes.as_dict().values())) as step:
        try:
            ds = build_dataset(p, progress=step)
        except DatasetError as exc:
            raise StageError(str(exc)) from None
    save_dataset(out, ds)
    return Prepared(out, len(ds), ds.images.shape[1:], ds.manifest.groupby("split").size().to_dict())
