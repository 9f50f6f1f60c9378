"""extract: every labelled split inverted into W+ (the encoder of `train-encoder`, then per-image refinement); the
latents, metrics and a comparison grid. The pool images that serve as partners under `mixing.bank: pool` are
`invert-pool`'s.

Writes data/latents/<split>.npy (row order = the split's manifest order) + info.json, metrics/inversion.json
(reconstruction and probe agreement, refined and encoder-only) and reports/inversion.png.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from advmix.inputs.data import dataset
from advmix.inputs.encoder import encoder
from advmix.inputs.gan import generator
from advmix.inputs.probe import probe
from advmix.stages import Progress, StageError, no_progress


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
                     f"{paths.INVERSION_METRICS}, {paths.INVERSION_FIGURE}: {self.seconds:.0f} s")
        return "\n".join(lines)


def run(p, progress: Progress = no_progress) -> Extracted:
    import torch

    from advmix import paths
    from advmix.figures import grid, save_png
    from advmix.files import atomic_write_json
    from advmix.gan import invert, latents
    from advmix.images import to_tensor
    from advmix.params import SPLITS

    ds = dataset(p)
    G, _ = generator(ds)
    probe_model = probe()
    splits = {name: part for name in SPLITS if len(part := ds.split(name))}
    if "train" not in splits:
        raise StageError("the dataset has no train split: its codes are what every mix starts from")
    enc = encoder()
    t0 = time.time()
    with progress("extract", sum(len(s) for s in splits.values())) as step:
        out = invert.invert_splits(G, enc, probe_model, {k: s.images for k, s in splits.items()}, p.extract, p.seed,
                                   progress=step)
    extra = {"n_latent": G.n_latent, "style_dim": G.style_dim, "mode": p.extract.mode,
             "generator": str(paths.GENERATOR), "generator_sha1": latents.file_digest(paths.GENERATOR)}
    latents.save_latents(paths.LATENTS_DIR, out.latents, {k: s.manifest for k, s in splits.items()}, extra=extra)
    metrics = out.metrics | {"torch_threads": torch.get_num_threads()}  # the codes depend on it
    atomic_write_json(paths.INVERSION_METRICS, metrics)
    shown = "test_balanced" if "test_balanced" in splits else next(iter(splits))
    enc_rec, ref_rec = out.reconstructions[shown]
    n = min(12, len(splits[shown]))
    save_png(grid(invert.comparison_images(to_tensor(splits[shown].images[:n]), enc_rec, ref_rec, n), ncol=n,
                  scale=max(1, 96 // G.out_size)), paths.INVERSION_FIGURE)
    return Extracted(metrics, list(splits), sum(len(s) for s in splits.values()), time.time() - t0)
