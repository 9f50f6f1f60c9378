"""extract: every labelled split inverted into W+ (encoder, then per-image refinement); the latents, the encoder,
metrics and a comparison grid.

The encoder is fine-tuned on real images of `gan.data`, the split the generator learnt from. Writes
data/latents/<split>.npy (row order = the split's manifest order) + info.json, models/encoder.pt,
metrics/inversion.json (reconstruction and probe agreement, refined and encoder-only) and reports/inversion.png.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from advmix.stages import Progress, StageError, no_progress
from advmix.stages.read_data import dataset, generator_data
from advmix.stages.read_gan import generator
from advmix.stages.read_probe import probe


@dataclass
class Extracted:
    metrics: dict[str, Any]  # metrics/inversion.json: per split, refined and encoder-only
    splits: list[str]
    images: int
    seconds: float

    def summary(self) -> str:
        from advmix import paths

        lines = []
        for name in self.splits:
            m, e = self.metrics[name], self.metrics[name]["encoder_only"]
            lines.append(f"  {name:14s} PSNR {m['psnr']:.2f} dB (encoder {e['psnr']:.2f}), label agreement "
                         f"{m['label_agreement']:.3f} (encoder {e['label_agreement']:.3f})")
        lines.append(f"wrote {paths.LATENTS_DIR} ({self.images} images, {self.metrics['images_per_s']:.1f} images/s), "
                     f"{paths.ENCODER}, {paths.INVERSION_METRICS}, {paths.INVERSION_FIGURE}: {self.seconds:.0f} s")
        return "\n".join(lines)


def run(p, progress: Progress = no_progress) -> Extracted:
    import torch

    from advmix import paths
    from advmix.data.store import mirror_invariant
    from advmix.figures import grid, save_png
    from advmix.files import atomic_write_json
    from advmix.gan import invert
    from advmix.images import to_tensor
    from advmix.params import SPLITS

    ds = dataset(p)
    G, w_avg = generator(ds)
    probe_model = probe()
    splits = {name: part for name in SPLITS if len(part := ds.split(name))}
    if "train" not in splits:
        raise StageError("the dataset has no train split: its codes are the partners of every mix")
    t0 = time.time()
    with progress("extract", invert.progress_total(p.extract, sum(len(s) for s in splits.values()))) as step:
        out = invert.extract(G, w_avg, probe_model, {k: s.images for k, s in splits.items()}, p.extract, p.seed,
                             encoder_images=generator_data(p, ds).images,
                             mirror=mirror_invariant(ds.info), progress=step)
    invert.save_latents(paths.LATENTS_DIR, out.latents, {k: s.manifest for k, s in splits.items()},
                        extra={"n_latent": G.n_latent, "style_dim": G.style_dim, "mode": p.extract.mode,
                               "generator": str(paths.GENERATOR),
                               "generator_sha1": invert.file_digest(paths.GENERATOR)})
    invert.save_encoder(paths.ENCODER, out.encoder, extra={
        "seed": p.seed, "params": p.extract.model_dump(mode="json"), "losses": out.encoder_losses})
    metrics = out.metrics | {"torch_threads": torch.get_num_threads()}  # the codes depend on it
    atomic_write_json(paths.INVERSION_METRICS, metrics)
    shown = "test_balanced" if "test_balanced" in splits else next(iter(splits))
    enc_rec, ref_rec = out.reconstructions[shown]
    n = min(12, len(splits[shown]))
    save_png(grid(invert.comparison_images(to_tensor(splits[shown].images[:n]), enc_rec, ref_rec, n), ncol=n,
                  scale=max(1, 96 // G.size)), paths.INVERSION_FIGURE)
    return Extracted(metrics, list(splits), sum(len(s) for s in splits.values()), time.time() - t0)
