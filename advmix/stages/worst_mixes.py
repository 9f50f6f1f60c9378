"""worst-mixes: the perturbation set at evaluation strength against the nominal classifier of the first planned
seed (train.seeds[0]): AdvMix's search on a group-stratified subset of test_balanced, the mixes that raise nominal's
loss most kept, with nominal's answers on them. The report shows them; it computes nothing itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from advmix.inputs.classifier import load_classifier
from advmix.inputs.data import dataset
from advmix.inputs.gan import mixing_inputs

TARGET = "nominal"  # the classifier the mixes are searched against


@dataclass
class WorstMixes:
    path: Path
    n: int
    fooled: int  # how many of the kept mixes nominal gets wrong

    def summary(self) -> str:
        return f"{self.path}: the {self.n} worst mixes against {TARGET}; it is wrong on {self.fooled} of them"


def run(p) -> WorstMixes:
    import io

    import numpy as np

    from advmix import paths
    from advmix.files import atomic_write_bytes
    from advmix.metrics import EvalConfig, worst_mixes
    from advmix.runtime import pick_device

    ds = dataset(p)
    seed = p.train.seeds[0]
    G, layers, latents = mixing_inputs(p, ds, "test_balanced")
    model = load_classifier(TARGET, seed)
    cfg = EvalConfig(p.evaluate, p.train, p.mixing.partners, p.seed)
    arrays = worst_mixes({TARGET: model}, ds.split("test_balanced"), latents, G, layers, cfg,
                         pick_device(p.train.device, "train.device"))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(paths.WORST_MIXES, buffer.getvalue())
    return WorstMixes(paths.WORST_MIXES, len(arrays["label"]), int((arrays[f"pred_{TARGET}"] != arrays["label"]).sum()))
