"""The generator, the mixing layers and the W+ codes, loaded and checked, or a StageError that names the file and
what to do."""

from __future__ import annotations

import json

import numpy as np

from advmix import paths
from advmix.gan import checkpoints
from advmix.gan.latents import LatentsError, file_digest, load_latents
from advmix.inputs.data import pool_partners
from advmix.mixing import resolve_layers
from advmix.stages import StageError


def generator(ds=None):
    """(G, w_avg) of models/gan/generator.pt; with `ds`, rendering at the dataset's resolution (see at_resolution)."""
    try:
        G, w_avg, _ = checkpoints.load_generator(paths.GENERATOR)
    except (checkpoints.CheckpointError, FileNotFoundError) as exc:
        raise StageError(f"{exc}; rerun `advmix train-gan`") from None
    return (G if ds is None else at_resolution(G, ds.images.shape[1], paths.GENERATOR)), w_avg


def at_resolution(G, resolution: int, source):
    """G with its images resized to the data's `resolution` (the classifier's); a generator may be larger than the
    data (a public 256 or 1024 px one beside a 64 px classifier), not smaller."""
    if G.size < resolution:
        raise StageError(f"{source} makes {G.size} px images, fewer than data.resolution ({resolution} px); use a "
                         f"generator of at least {resolution} px, or a lower data.resolution")
    return G.render_at(resolution)


def mixing_inputs(p, ds, split: str):
    """The generator, the resolved mixing layers and one split's W+ codes."""
    G, _ = generator(ds)
    try:
        layers = resolve_layers(p.mixing.layers, G.size, paths.LAYERS_METRICS)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise StageError(str(exc)) from None
    return G, layers, split_latents(ds, split, G)


def split_latents(ds, split: str, G):
    """One split's W+ codes, checked against the split, the generator file and G's W+ shape."""
    try:
        return load_latents(paths.latents_file(split), ds.split(split).manifest, G.n_latent, G.style_dim,
                            generator_sha1=file_digest(paths.GENERATOR))
    except (LatentsError, FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None


def partner_bank(p, ds, G, own):
    """(codes, classes) of the mixing partners: the train split's `own` codes and labels, or, under `mixing.bank:
    pool`, the pool images that invert-pool inverted, with the classes the probe read from their images (no pool
    label is read)."""

    if p.mixing.bank == "train":
        return own, ds.split("train").manifest["label"].to_numpy()
    rerun = "(run `advmix invert-pool` with mixing.bank: pool)"
    try:
        codes = load_latents(paths.POOL_LATENTS, pool_partners(p).manifest, G.n_latent, G.style_dim,
                             generator_sha1=file_digest(paths.GENERATOR), hint=rerun)
        classes = json.loads(paths.POOL_LATENTS_INFO.read_text()).get("pool_classes")
    except (LatentsError, FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
    if classes is None or len(classes) != len(codes):
        raise StageError(f"{paths.POOL_LATENTS_INFO}: no probe classes for the {len(codes)} pool codes {rerun}")
    classes = np.asarray(classes, dtype=np.int64)
    unread = sorted(set(ds.split("train").manifest["label"].tolist()) - set(classes.tolist()))
    if unread:
        raise StageError(f"{paths.POOL_LATENTS_INFO}: the probe reads none of the {len(codes)} pool partners as class(es) "
                         f"{unread}, so those classes have no same-label partner; a stronger probe (probe.epochs, see "
                         f"{paths.PROBE_METRICS}) or a larger pool helps, or use mixing.bank: train")
    return codes, classes

