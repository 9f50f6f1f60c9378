"""The prepared dataset, refused unless validated, and the unlabelled pool the generator learns from."""

from __future__ import annotations

import json

from advmix import paths
from advmix.data import DatasetError, load_dataset
from advmix.data.store import dataset_digest
from advmix.stages import StageError


def dataset(p, validated: bool = True):
    """The prepared dataset of `data.name`; with `validated`, only once `advmix validate` has passed on it (a stage
    run by hand would otherwise train on data that DVC's pipeline stops at)."""

    try:
        ds = load_dataset(paths.dataset_dir(p.data.name))
    except DatasetError as exc:
        raise StageError(str(exc)) from None
    if validated:
        result = paths.validation_metrics()
        try:
            outcome = json.loads(result.read_text())
        except FileNotFoundError:
            raise StageError(f"{result}: no validation result for {paths.dataset_dir(p.data.name)}; run "
                             "`advmix validate` first") from None
        except (OSError, ValueError) as exc:
            raise StageError(f"{result}: not a readable validation result ({exc}); rerun `advmix validate`") from None
        if not isinstance(outcome, dict) or outcome.get("success") is not True:
            failed = outcome.get("failed") if isinstance(outcome, dict) else None
            raise StageError(f"{result}: the data failed validation ({', '.join(failed or ['no success flag'])}); "
                             f"fix the data or params, then rerun `advmix validate` (see {paths.validation_dir()})")
        if outcome.get("data_sha1") != dataset_digest(paths.dataset_dir(p.data.name)):
            raise StageError(f"{result}: stale, it validated other data than {paths.dataset_dir(p.data.name)} "
                             "holds now; rerun `advmix validate`")
    return ds


def pool():
    """data/pool/, the unlabelled pool that `advmix pool` wrote from the validated dataset; its labels are read by
    the probe only (a measuring instrument), never by the generator or the encoder."""
    if not paths.POOL_DIR.is_dir():
        raise StageError(f"{paths.POOL_DIR}: missing; run `advmix pool`, which writes it from the validated dataset")
    try:
        return load_dataset(paths.POOL_DIR)
    except DatasetError as exc:
        raise StageError(f"{exc}; rerun `advmix pool`") from None


def pool_partners(p):
    """The pool images that `invert-pool` inverts as mixing partners under `mixing.bank: pool`: the first rows of
    data/pool, as many as data.sizes.train (not the labelled splits, so that a variant of them reuses the codes)."""
    part = pool()
    return part.rows(slice(0, min(len(part), p.data.sizes.train)))

