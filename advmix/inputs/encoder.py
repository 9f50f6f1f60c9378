"""The image-to-W+ encoder that train-encoder wrote, loaded and checked, or a StageError that names the file and what
to do."""

from __future__ import annotations

from advmix import paths
from advmix.stages import StageError


def encoder():
    """models/encoder.pt: advmix's own encoder, or the public one (pSp/e4e) that train-encoder loaded; in eval mode."""
    from advmix.gan import invert

    try:
        return invert.load_encoder(paths.ENCODER)
    except (FileNotFoundError, ValueError) as exc:  # each message names the file and says what to do
        raise StageError(str(exc)) from None
