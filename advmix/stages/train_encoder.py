"""train-encoder: the encoder from an image to W+, learnt against the generator on its samples and then on the
unlabelled pool (data/pool/), or, with `extract.encoder: PATH`, a public pSp or e4e encoder loaded. Writes models/encoder.pt and metrics/encoder.json; `extract` reads the encoder to
invert the labelled splits. Apart from extract so that a variant with another spurious attribute or rho, whose
pool and generator are the same, keeps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from advmix.inputs.data import pool
from advmix.inputs.gan import generator
from advmix.inputs.probe import probe
from advmix.stages import Progress, StageError, no_progress


@dataclass
class EncoderTrained:
    metrics: dict[str, Any]  # metrics/encoder.json: the last losses of each phase, images, seconds

    def summary(self) -> str:
        from advmix import paths

        m = self.metrics
        if "public" in m:
            return f"wrote {paths.ENCODER}: {m['type']} from {m['public']} ({m['parameters']:,} parameters)"
        return (f"wrote {paths.ENCODER}: latent loss {m['latent_loss']:.4f}, real loss {m['real_loss']:.4f} on "
                f"{m['images']} pool images, {m['seconds']:.0f} s")


def run(p, progress: Progress = no_progress) -> EncoderTrained:
    import torch

    from advmix import paths
    from advmix.data.store import mirror_invariant
    from advmix.files import atomic_write_json
    from advmix.gan import invert
    from advmix.images import to_tensor

    ds = pool()
    G, w_avg = generator(ds)
    e = p.extract
    if e.encoder != "train":
        return load_public(e.encoder, G)
    probe_model = probe()
    torch.manual_seed(p.seed)
    t0 = time.time()
    with progress("train-encoder", e.encoder_steps + e.encoder_real_steps) as step:
        enc, losses = invert.train_encoder(G, w_avg, to_tensor(ds.images), probe_model, steps=e.encoder_steps,
                                           real_steps=e.encoder_real_steps, batch=e.batch, lr=e.lr,
                                           feature_weight=e.feature_weight, width=e.width, seed=p.seed,
                                           mirror=mirror_invariant(ds.info), progress=step)
    # the knobs that made these weights (extract.encoder is `train` here; extract's own knobs do not shape them)
    knobs = e.model_dump(mode="json", exclude={"encoder"})
    invert.save_encoder(paths.ENCODER, enc, extra={"seed": p.seed, "params": knobs, "losses": losses})
    # CPU training is bitwise reproducible at the same thread count only: record it, as the other stages do
    metrics = losses | {"images": len(ds), "seconds": time.time() - t0, "torch_threads": torch.get_num_threads()}
    atomic_write_json(paths.ENCODER_METRICS, metrics)
    return EncoderTrained(metrics)


def load_public(path: str, G) -> EncoderTrained:
    """`extract.encoder: PATH`: the pSp/e4e encoder of PATH, checked against G and saved where extract reads it."""
    import torch

    from advmix import paths
    from advmix.files import atomic_write_json
    from advmix.gan import invert
    from advmix.gan.checkpoints import CheckpointError
    from advmix.gan.encoders import describe, public_encoder

    try:
        enc = public_encoder(path, G)
    except CheckpointError as exc:  # EncoderError included: each names the file and what to do
        raise StageError(f"extract.encoder: {exc}") from None
    invert.save_encoder(paths.ENCODER, enc, extra={"public": str(path)})
    metrics = {"public": str(path), **describe(enc.encoder), "images": 0, "torch_threads": torch.get_num_threads()}
    atomic_write_json(paths.ENCODER_METRICS, metrics)
    return EncoderTrained(metrics)
