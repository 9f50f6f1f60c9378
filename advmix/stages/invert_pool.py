"""invert-pool: under `mixing.bank: pool`, the pool images that serve as mixing partners inverted into W+ as
`extract` inverts the labelled splits, with each one's class as the probe reads its image (no pool label is read).

A stage of its own because it reads only what the generator and the encoder read (data/pool, the models) and
data.sizes.train (how many partners): a variant with another spurious attribute or rho reuses its codes, where
inverting them inside `extract` cost every pool variant a few minutes. Under `mixing.bank: train` no partner comes
from the pool, and it writes info.json alone.

Writes data/pool_latents/pool.npy (row order = data/pool's first rows) + info.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from advmix.inputs.data import pool_partners
from advmix.inputs.encoder import encoder
from advmix.inputs.gan import generator
from advmix.inputs.probe import probe
from advmix.stages import Progress, StageError, no_progress


@dataclass
class PoolInverted:
    bank: str  # mixing.bank
    images: int  # pool partners inverted (0 under mixing.bank: train)
    metrics: dict[str, Any]  # their reconstruction, as metrics/inversion.json gives the labelled splits'
    seconds: float

    def summary(self) -> str:
        from advmix import paths

        if not self.images:
            return f"mixing.bank: {self.bank}: no pool partners to invert; wrote {paths.POOL_LATENTS_INFO}"
        m = self.metrics
        return (f"wrote {paths.POOL_LATENTS} ({self.images} pool partners, PSNR {m['psnr']:.2f} dB, label agreement "
                f"{m['label_agreement']:.3f}): {self.seconds:.0f} s")


def run(p, progress: Progress = no_progress) -> PoolInverted:
    from advmix import paths
    from advmix.gan import invert, latents
    from advmix.params import POOL
    from advmix.probes import predict

    if p.mixing.bank != POOL:
        latents.save_latents(paths.POOL_LATENTS.parent, {}, {}, extra={"bank": p.mixing.bank})
        return PoolInverted(p.mixing.bank, 0, {}, 0.0)
    partners = pool_partners(p)
    if not len(partners):
        raise StageError(f"mixing.bank: pool, but {paths.POOL_DIR} has no rows; set data.sizes.pool above 0, or "
                         "mixing.bank: train")
    G, _ = generator(partners)
    probe_model, enc = probe(), encoder()
    t0 = time.time()
    with progress("invert-pool", len(partners)) as step:
        out = invert.invert_splits(G, enc, probe_model, {POOL: partners.images}, p.extract, p.seed,
                                   progress=step)
    extra = {"bank": POOL, "n_latent": G.n_latent, "style_dim": G.style_dim, "mode": p.extract.mode,
             "generator": str(paths.GENERATOR), "generator_sha1": latents.file_digest(paths.GENERATOR),
             "metrics": out.metrics[POOL],
             "pool_classes": predict(probe_model, partners.images)["label"].argmax(1).tolist()}
    latents.save_latents(paths.POOL_LATENTS.parent, out.latents, {POOL: partners.manifest}, extra=extra)
    return PoolInverted(POOL, len(partners), out.metrics[POOL], time.time() - t0)
