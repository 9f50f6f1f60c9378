"""train-gan: StyleGAN2 learnt from the unlabelled pool (data/pool/), or `gan.pretrained` loaded; then samples, a
style-mixing grid and quality metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from advmix.inputs.data import pool
from advmix.inputs.gan import at_resolution
from advmix.inputs.probe import check_probe
from advmix.inputs.probe import probe as load_probe
from advmix.stages import Progress, StageError, no_progress


@dataclass
class GanTrained:
    metrics: dict[str, Any]  # metrics/gan.json: the run (gan_*) and the generator's quality
    seconds: float

    def summary(self) -> str:
        from advmix import paths

        m = self.metrics
        return (f"generator {paths.GENERATOR}: probe Fréchet distance {m['probe_frechet_distance']:.3f} "
                f"(real halves {m['probe_frechet_distance_real_halves']:.3f}), "
                f"mean attribute TV {m['attribute_tv_mean']:.3f}, {self.seconds:.0f} s")


def run(p, progress: Progress = no_progress) -> GanTrained | None:
    """None on a torchrun rank other than 0 (rank 0 writes)."""
    import torch

    from advmix import paths
    from advmix.data.store import mirror_invariant
    from advmix.figures import grid, save_png
    from advmix.files import BrokenFileError, atomic_write_json
    from advmix.gan import checkpoints
    from advmix.gan.training import GanConfig, GanDivergedError, mixing_grid, quality_metrics, sample_images, train_gan
    from advmix.mixing import layer_groups

    train = pool()
    t0 = time.time()
    if p.gan.pretrained is not None:
        try:
            G, w_avg, _ = checkpoints.load_generator(p.gan.pretrained)
        except (checkpoints.CheckpointError, FileNotFoundError) as exc:
            raise StageError(str(exc)) from None
        at_resolution(G, train.images.shape[1], f"gan.pretrained: {p.gan.pretrained}")  # figures and metrics
        figures = {"iterations": 0, "seconds": 0.0, "images_per_s": 0.0, "pretrained": str(p.gan.pretrained)}
        checkpoints.save_generator(paths.GENERATOR, G, {}, w_avg)  # what every later stage reads
    else:
        check_probe()  # read after training: a missing or broken probe is named now, not after it
        for folder in (paths.GAN_DIR, paths.GAN_STATE.parent):
            folder.mkdir(parents=True, exist_ok=True)
        with progress("train-gan", p.gan.iterations) as step:
            try:
                config = GanConfig(p.gan, p.seed, mirror_invariant(train.info))
                run = train_gan(train.images, config, paths.GAN_STATE, progress=lambda done, stats: step(
                    completed=done, info=" ".join(f"{k} {v:.3f}" for k, v in stats.items())))
            except (BrokenFileError, GanDivergedError) as exc:  # a truncated state or a NaN loss: named, with what to do
                raise StageError(str(exc)) from None
        if run.rank != 0:
            return None
        G = run.G_ema
        checkpoints.save_generator(paths.GENERATOR, G, run.config, run.w_avg)
        figures = run.figures() | {"images": len(train)}
    save_png(grid(sample_images(G, 64, p.seed), ncol=8, scale=max(1, 96 // G.out_size)), paths.GAN_SAMPLES)
    save_png(mixing_grid(G, layer_groups(G.size)["coarse"], 6, p.seed), paths.GAN_MIXING)
    quality = quality_metrics(G, load_probe(), train, p.gan.eval_samples, p.seed)
    # CPU training is bitwise reproducible at the same thread count only: record it, as train and evaluate do
    metrics = {"gan_" + k: v for k, v in figures.items()} | quality | {"torch_threads": torch.get_num_threads()}
    atomic_write_json(paths.GAN_METRICS, metrics)
    return GanTrained(metrics, time.time() - t0)
