"""Attribute probes: the measuring instrument for generated and mixed images.

One small CNN with a head for the label and a head per known attribute, trained on real images
with blur and noise augmentation (generated samples are slightly blurry; a probe trained only on
crisp images misreads them). It flattens spatial features instead of pooling them away, because
global pooling could not see the mouth (a smile is a few pixels at 32 px). The label head is trained
with group-balanced sampling, so it reads the mouth and not the spurious attribute: it judges
whether a mix kept the label, and must not itself take the shortcut under study.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advmix.data.store import mirror_invariant
from advmix.files import atomic_torch_save, read_torch
from advmix.groups import worst_group_acc
from advmix.images import to_tensor

if TYPE_CHECKING:  # the probe reads images, not the dataset format: nothing of advmix/data at run time
    from advmix.data.store import Dataset


def heads_of(info: dict[str, Any]) -> dict[str, int]:
    """Head name -> number of classes: the label, then every attribute."""
    return {"label": int(info["n_classes"]), **{k: len(v) for k, v in info.get("attributes", {}).items()}}


def targets_of(ds: Dataset, heads: dict[str, int]) -> dict[str, np.ndarray]:
    """Class index per head; attribute values are mapped through their position in info.attributes."""
    out = {"label": ds.manifest["label"].to_numpy()}
    for name in heads:
        if name != "label":
            values = {v: i for i, v in enumerate(ds.info["attributes"][name])}
            out[name] = ds.manifest[name].map(values).to_numpy()
    return out


def build_probe(resolution: int, heads: dict[str, int], width: int = 32):
    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads_spec = dict(heads)
            layers, ch, res = [], 3, resolution
            for i, out in enumerate([width, width * 2, width * 2, width * 4]):
                layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                if res > 4:
                    layers.append(nn.MaxPool2d(2))
                    res //= 2
                ch = out
            while res > 4:  # large inputs: pool down to 4x4 before the flatten
                layers.append(nn.MaxPool2d(2))
                res //= 2
            self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * res * res, 256), nn.ReLU())
            self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in heads.items()})

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.features(x)
            return {k: head(h) for k, head in self.heads.items()}

    return Probe()


def degrade(x, gen):
    """Random blur and noise, so the probe reads generated images as it reads real ones."""
    n = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).to(x)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    strength = torch.rand(n, 1, 1, 1, generator=gen).to(x)
    x = x + strength * (blurred - x)
    return x + torch.randn(x.shape, generator=gen).to(x) * 0.05 * torch.rand(n, 1, 1, 1, generator=gen).to(x)


def train_probe(train: Dataset, val: Dataset, epochs: int, batch: int, lr: float, width: int, seed: int,
                progress=None):
    """Fit the probe; returns (probe, metrics with `val`'s accuracy per head and the label's worst-group accuracy)."""

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mirror = mirror_invariant(train.info)
    heads = heads_of(train.info)
    model = build_probe(train.images.shape[1], heads, width)
    x = to_tensor(train.images)
    ys = {k: torch.tensor(v, dtype=torch.long) for k, v in targets_of(train, heads).items()}
    opt = torch.optim.Adam(model.parameters(), lr)
    steps = epochs * max(1, len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    model.train()
    for _ in range(steps):
        # uniform draws: the pool's attributes are independent of the label already, so no group needs reweighting
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        xb = degrade(x[idx], gen)
        if mirror and torch.rand(1, generator=gen).item() < 0.5:
            xb = xb.flip(3)
        out = model(xb)
        loss = sum(F.cross_entropy(out[k], ys[k][idx]) for k in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(1)
    model.eval()
    return model, evaluate_probe(model, val), steps


def predict(model, images, batch: int = 256) -> dict[str, np.ndarray]:
    """Class probabilities per head for uint8 images (numpy) or a [-1, 1] tensor."""
    x = to_tensor(images) if isinstance(images, np.ndarray) else images
    outs: dict[str, list] = {}
    with torch.no_grad():
        for chunk in x.split(batch):
            for k, v in model(chunk.float()).items():
                outs.setdefault(k, []).append(v.softmax(1).cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def evaluate_probe(model, ds: Dataset) -> dict[str, Any]:
    pred = predict(model, ds.images)
    truth = targets_of(ds, model.heads_spec)
    metrics = {f"probe_{k}_acc": float((pred[k].argmax(1) == truth[k]).mean()) for k in model.heads_spec}
    # the label's accuracy at its worst value of any attribute: a probe that reads an attribute as part of the label
    # shows it here (the pool has no group column: no attribute is spurious there)
    correct = pred["label"].argmax(1) == truth["label"]
    worst = [worst_group_acc(correct, truth["label"] * heads + truth[name])
             for name, heads in model.heads_spec.items() if name != "label"]
    metrics["probe_label_worst_group_acc"] = min(worst, default=float(correct.mean()))
    return metrics


def save_probe(path: Path, model, resolution: int, width: int) -> None:
    atomic_torch_save({"format": "advmix-probe", "resolution": resolution, "width": width, "heads": model.heads_spec,
                       "state_dict": model.state_dict()}, path)


def load_probe(path: Path):
    """The probe saved by save_probe; FileNotFoundError, or ValueError naming the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: probe not found (run `advmix probe`)")
    blob = read_torch(path, "probe checkpoint", "rerun `advmix probe`")
    if not isinstance(blob, dict) or blob.get("format") != "advmix-probe":
        raise ValueError(f"{path}: not an advmix probe checkpoint")
    model = build_probe(blob["resolution"], blob["heads"], blob["width"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()
