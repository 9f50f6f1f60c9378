"""The on-disk dataset format (store) and the dataset builders (build: synthfaces, colordigits, celeba, folder)."""

from __future__ import annotations

from advmix.data.store import Dataset, DatasetError, load_dataset, save_dataset

__all__ = ["Dataset", "DatasetError", "load_dataset", "save_dataset"]
