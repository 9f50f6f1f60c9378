"""probe: the attribute probe (label + every attribute) that measures generated and mixed images."""

from __future__ import annotations

from dataclasses import dataclass

from advmix.inputs.data import pool
from advmix.stages import Progress, no_progress


@dataclass
class Probed:
    metrics: dict[str, float]  # held-out pool accuracy per head, as in metrics/probe.json

    def summary(self) -> str:
        return "\n".join(f"  {k:34s} {v:.4f}" for k, v in self.metrics.items())


def run(p, progress: Progress = no_progress) -> Probed:
    import torch

    from advmix import paths
    from advmix.files import atomic_write_json
    from advmix.probes import save_probe, train_probe

    ds = pool()
    # a measuring instrument learns best where the attributes are independent: in the pool (a probe taught on the
    # skewed train split reads skin tone as part of the smile). Its last tenth is held out for the probe's own val:
    # the probe reads nothing of the labelled splits, so it serves every spurious attribute and rho.
    n_val = max(1, len(ds) // 10)
    learn, held = ds.rows(slice(0, len(ds) - n_val)), ds.rows(slice(len(ds) - n_val, len(ds)))
    with progress("probe", p.probe.epochs * max(1, len(learn) // p.probe.batch)) as step:
        model, metrics, _ = train_probe(learn, held, p.probe.epochs, p.probe.batch,
                                        p.probe.lr, p.probe.width, p.seed, progress=step)
    save_probe(paths.PROBE, model, ds.images.shape[1], p.probe.width)
    metrics = metrics | {"torch_threads": torch.get_num_threads()}  # the weights depend on it (docs/threads.md)
    atomic_write_json(paths.PROBE_METRICS, metrics)
    return Probed(metrics)
