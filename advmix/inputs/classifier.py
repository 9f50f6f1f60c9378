"""A trained classifier (models/classifier-<mode>-s<seed>.pt), loaded and checked, or a StageError that says how to
make it."""

from __future__ import annotations

from advmix import paths
from advmix.models import load_classifier as load
from advmix.stages import StageError


def load_classifier(mode: str, seed: int, rule: str | None = None, with_payload: bool = False):
    """The trained classifier of a run (the weights that selection `rule` keeps; None: the default rule's), with
    its checkpoint's other entries if asked, or a StageError that says how to make it."""
    path = paths.classifier(mode, seed)
    try:
        model, payload = load(path, rule=rule)
    except FileNotFoundError:
        raise StageError(f"{path}: no such classifier; run `advmix train --mode {mode} --seed {seed}` first") from None
    except ValueError as exc:  # a broken file
        raise StageError(str(exc)) from None
    recorded = (payload.get("mode", mode), payload.get("seed", seed))
    if recorded != (mode, seed):  # a copied or renamed file: its numbers would be written as another run's
        raise StageError(f"{path}: holds the classifier of mode {recorded[0]} seed {recorded[1]}, not {mode} seed "
                         f"{seed}; rerun `advmix train --mode {mode} --seed {seed}`")
    return (model, payload) if with_payload else model
