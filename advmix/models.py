"""Classifiers under study: a torchvision ResNet-18 adapted to small images, and a small CNN for CPU runs.

`width` is the number of channels of the first stage for both (64 is the standard ResNet-18; the small CNN
defaults to 32). Neither model loads pretrained weights, so nothing is downloaded.

The small CNN flattens its last 4 x 4 feature map instead of pooling it away: the label of the procedural
faces is a small mouth, and after global pooling the network cannot tell where a feature sits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from advmix.files import BrokenFileError, atomic_torch_save, read_torch

MODELS = ("smallcnn", "resnet18")
FORMAT = "advmix-classifier"


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (width, 2w, 2w, 4w), max-pooled down to 4 x 4, flattened, two linear layers."""

    def __init__(self, n_classes: int, resolution: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch, res = 3, resolution
        for out in (width, width * 2, width * 2, width * 4):
            layers += [nn.Conv2d(ch, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if res > 4:
                layers.append(nn.MaxPool2d(2))
                res //= 2
            ch = out
        while res > 4:  # large inputs: pool down to 4 x 4 before the flatten
            layers.append(nn.MaxPool2d(2))
            res //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * res * res, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def small_resnet18(n_classes: int, width: int = 64) -> nn.Module:
    """torchvision's ResNet-18 with a 3 x 3 stride-1 stem, no max-pool, and planes width, 2w, 4w, 8w."""
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=n_classes)
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.maxpool = nn.Identity()
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, width * 2, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, width * 4, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, width * 8, 2, stride=2)
    net.fc = nn.Linear(width * 8, n_classes)
    for m in net.modules():  # the same initialisation as torchvision's ResNet.__init__
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return net


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, back in the mode it came in after it."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def build_model(name: str, n_classes: int, resolution: int, width: int) -> nn.Module:
    """A freshly initialised classifier taking [N, 3, resolution, resolution] images in [-1, 1] -> logits."""
    if name == "smallcnn":
        return SmallCNN(n_classes, resolution, width)
    if name == "resnet18":
        return small_resnet18(n_classes, width)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def save_classifier(path: str | os.PathLike[str], model: nn.Module, config: dict[str, Any],
                    extra: dict[str, Any] | None = None, rule_states: dict[str, dict] | None = None) -> Path:
    """Write weights + build_model kwargs (+ plain-data extras) atomically; loadable with weights_only=True.

    `rule_states`: the weights that other model-selection rules keep (advmix.classifier_training.SELECTION_RULES), by rule;
    `model` holds the default rule's."""
    model = getattr(model, "module", model)
    payload = {"format": FORMAT, "config": dict(config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "rule_states": {rule: {k: v.detach().cpu() for k, v in sd.items()}
                               for rule, sd in (rule_states or {}).items()}, **(extra or {})}
    atomic_torch_save(payload, path)
    return Path(path)


def load_classifier(path: str | os.PathLike[str], device: str | torch.device = "cpu", rule: str | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on `device`, the whole payload without the weights); BrokenFileError for a broken file.

    `rule`: the weights of that model-selection rule (None: the default rule's)."""
    fix = "delete it and rerun `advmix train` for it"
    payload = read_torch(path, "classifier checkpoint", fix)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BrokenFileError(f"{path}: not an advmix classifier checkpoint (format {FORMAT!r}); {fix}")
    cfg = payload["config"]
    state, others = payload.pop("state_dict"), payload.pop("rule_states", {}) or {}
    if rule is not None and rule in others:
        state = others[rule]
    elif rule is not None and rule != payload.get("default_rule", rule):
        raise BrokenFileError(f"{path}: holds no weights for selection rule {rule!r} (it has "
                              f"{sorted(others) or 'only the default'}); {fix}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise BrokenFileError(f"{path}: NaN or Inf in {broken[0]} ({len(broken)} tensor(s)); {fix}")
    model = build_model(cfg["model"], cfg["n_classes"], cfg["resolution"], cfg["width"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # weights of another architecture under this config
        raise BrokenFileError(f"{path}: weights do not fit its config {cfg} ({str(exc).splitlines()[0]}); {fix}") from None
    return model.to(device).eval(), payload
