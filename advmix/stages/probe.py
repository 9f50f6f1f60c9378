"""probe: the attribute probe (label + every attribute) that measures generated and mixed images."""

from __future__ import annotations

from dataclasses import dataclass

from advmix.stages import Progress, no_progress
from advmix.stages.read_data import dataset


@dataclass
class Probed:
    metrics: dict[str, float]  # val accuracy per head, as in metrics/probe.json

    def summary(self) -> str:
        return "\n".join(f"  {k:34s} {v:.4f}" for k, v in self.metrics.items())


def run(p, progress: Progress = no_progress) -> Probed:
    import torch

    from advmix import paths
    from advmix.files import atomic_write_json
    from advmix.probes import save_probe, train_probe

    ds = dataset(p)
    # a measuring instrument learns best where the attributes are independent: in the pool, when there is one
    # (a probe taught on the skewed train split reads skin tone as part of the smile)
    pool = ds.split("pool")
    source = pool if len(pool) else ds.split("train")
    with progress("probe", p.probe.epochs * max(1, len(source) // p.probe.batch)) as step:
        model, metrics, _ = train_probe(source, ds.split("val"), p.probe.epochs, p.probe.batch,
                                        p.probe.lr, p.probe.width, p.seed, progress=step)
    save_probe(paths.PROBE, model, ds.images.shape[1], p.probe.width)
    metrics = metrics | {"torch_threads": torch.get_num_threads()}  # the weights depend on it (docs/threads.md)
    atomic_write_json(paths.PROBE_METRICS, metrics)
    return Probed(metrics)
