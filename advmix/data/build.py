"""The dataset builders, by `data.name`: only the prepare stage runs them."""

from __future__ import annotations

from collections.abc import Callable

from advmix.data.store import Dataset
from advmix.params import Params


def build_dataset(params: Params, progress: Callable[[int], None] | None = None) -> Dataset:
    """The dataset named by `data.name`, deterministic in `seed`."""
    name = params.data.name
    if name == "synthfaces":
        from advmix.data import synthfaces as builder
    elif name == "colordigits":
        from advmix.data import colordigits as builder
    elif name == "folder":
        from advmix.data import folder as builder
    else:
        from advmix.data import celeba as builder
    return builder.build(params.data, params.seed, progress)
