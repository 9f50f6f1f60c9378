"""What several stages read, loaded and checked, or a StageError that names the file and what to do."""

from __future__ import annotations

from advmix.stages import StageError


def dataset(p, validated: bool = True):
    """The prepared dataset of `data.name`; with `validated`, only once `advmix validate` has passed on it (a stage
    run by hand would otherwise train on data that DVC's pipeline stops at)."""
    import json

    from advmix import paths
    from advmix.data import DatasetError, load_dataset

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
    return ds


def generator_data(p, ds):
    """The split the generator and the encoder learn from (`gan.data`); its labels are never read."""
    part = ds.split(p.gan.data)
    if not len(part):
        raise StageError(f"gan.data: the dataset has no {p.gan.data!r} images; set data.sizes.pool > 0 and rerun "
                         "`advmix prepare`, or set gan.data: train")
    return part


def check_probe() -> None:
    """That models/probe.pt exists and is a readable torch file (no weights built, no random draws): a stage calls
    this before long work that ends by reading the probe."""
    from advmix import paths
    from advmix.files import read_torch

    if not paths.PROBE.is_file():
        raise StageError(f"{paths.PROBE}: probe not found (run `advmix probe`)")
    try:  # a truncated or foreign file, named (torch's own error names no file)
        read_torch(paths.PROBE, "probe checkpoint", "rerun `advmix probe`")
    except ValueError as exc:
        raise StageError(str(exc)) from None


def probe():
    """The attribute probe of `advmix probe` (models/probe.pt)."""
    from advmix import paths
    from advmix.probes import load_probe

    check_probe()  # a second read of a small file; it goes once load_probe reads through advmix.files.read_torch
    try:
        return load_probe(paths.PROBE)
    except ValueError as exc:
        raise StageError(str(exc)) from None


def generator(ds=None):
    """(G, w_avg) of models/gan/generator.pt; with `ds`, checked to make images of the dataset's size."""
    from advmix import paths
    from advmix.gan import checkpoints

    try:
        G, w_avg, _ = checkpoints.load_generator(paths.GENERATOR)
    except (checkpoints.CheckpointError, FileNotFoundError) as exc:
        raise StageError(f"{exc}; rerun `advmix train-gan`") from None
    if ds is not None and G.size != ds.images.shape[1]:
        raise StageError(f"{paths.GENERATOR} makes {G.size} px images but the dataset has {ds.images.shape[1]} px")
    return G, w_avg


def mixing_inputs(p, ds, split: str):
    """The generator, the resolved mixing layers and one split's W+ codes."""
    from advmix import paths
    from advmix.mixing import resolve_layers

    G, _ = generator(ds)
    try:
        layers = resolve_layers(p.mixing.layers, G.size, paths.LAYERS_METRICS)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise StageError(str(exc)) from None
    return G, layers, split_latents(ds, split, G)


def split_latents(ds, split: str, G):
    """One split's W+ codes, checked against the split and the generator."""
    from advmix import paths
    from advmix.gan.invert import LatentsError
    from advmix.train import load_latents

    try:
        return load_latents(paths.LATENTS_DIR, ds.split(split), split, G.n_latent, G.style_dim)
    except (LatentsError, FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
