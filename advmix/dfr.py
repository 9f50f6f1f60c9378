"""Deep Feature Reweighting (Kirichenko, Izmailov and Wilson, ICLR 2023): keep everything a trained classifier
learnt but its last layer, and refit that layer on group-balanced held-out data. It reads the group labels of
val, never those of train; the paper's point is that ERM features already hold the core attribute, and a last
layer fit where the spurious one no longer predicts the label learns to read the core one.

The recipe, as the paper's DFR on val:
- the features are the inputs of the model's last nn.Linear (smallcnn: its 256 hidden units; resnet18: the pooled
  channels), standardised with val's mean and standard deviation;
- val is split into two halves, stratified by group (seeded);
- for each strength C of `dfr.strengths`, l1-regularised logistic regression (scikit-learn, liblinear; one-vs-rest
  for three classes or more) is fit on
  `dfr.subsets` group-balanced draws of the first half (each group cut down to the smallest one), the layers
  averaged, and scored by worst-group accuracy on the second half; the best C (ties: the earlier in the list)
  is refit the same way on the whole of val.
The refit layer replaces the old one, with the standardisation folded into its weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from torch import nn

from advmix.data.store import Dataset
from advmix.groups import worst_group_acc
from advmix.images import to_tensor
from advmix.models import eval_mode


@dataclass
class Refit:
    model: object  # the classifier with its last layer replaced (CPU, eval mode)
    strength: float  # the C chosen on the second half of val
    half_worst_group_acc: dict[float, float]  # C -> worst-group accuracy on the second half of val


def last_linear(model):
    """The classifier's last nn.Linear: the layer DFR refits."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer for DFR to refit")
    return linears[-1]


def features(model, images: np.ndarray, batch: int, device) -> np.ndarray:
    """The inputs of the last linear layer for uint8 N x H x W x 3 images (float64, N x d)."""

    seen: list[np.ndarray] = []
    hook = last_linear(model).register_forward_hook(lambda m, args, out: seen.append(args[0].double().cpu().numpy()))
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(images), batch):
                model(to_tensor(images[start:start + batch]).to(device))
    finally:
        hook.remove()
    return np.concatenate(seen) if seen else np.zeros((0, last_linear(model).in_features))


def balanced_draw(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices with every present group cut (without replacement) to the size of the smallest one."""
    present = np.unique(groups)
    n = min(int((groups == g).sum()) for g in present)
    return np.concatenate([rng.choice(np.flatnonzero(groups == g), n, replace=False) for g in present])


def fit_layer(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, strength: float, subsets: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(weight [n_classes, d], bias [n_classes]) averaged over `subsets` group-balanced fits of l1 logistic
    regression; a class a draw lacks gets no logit from that draw."""
    weight, bias = np.zeros((n_classes, x.shape[1])), np.zeros(n_classes)
    for _ in range(subsets):
        rows = balanced_draw(groups, rng)
        classes = np.unique(y[rows])
        if len(classes) < 2:
            raise ValueError(f"a group-balanced draw of {len(rows)} val images holds one class only; DFR needs "
                             "val images of every class (raise data.sizes.val)")
        lr = LogisticRegression(l1_ratio=1.0, C=strength, solver="liblinear",  # l1_ratio 1: the l1 penalty
                                random_state=int(rng.integers(2**31)))
        if len(classes) == 2:  # one score row, for the second class: logits (0, s) give the same argmax
            fit = lr.fit(x[rows], y[rows])
            weight[classes[1]] += fit.coef_[0]
            bias[classes[1]] += fit.intercept_[0]
        else:  # liblinear fits two classes: one l1 model per class against the rest (one-vs-rest)
            ovr = OneVsRestClassifier(lr).fit(x[rows], y[rows])
            for c, est in zip(ovr.classes_, ovr.estimators_, strict=True):
                weight[c] += est.coef_[0]
                bias[c] += est.intercept_[0]
    return weight / subsets, bias / subsets


def halves(groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the rows, each group split as evenly as it can be (a group of one goes first)."""
    first, second = [], []
    for g in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == g))
        cut = (len(rows) + 1) // 2
        first.append(rows[:cut])
        second.append(rows[cut:])
    return np.concatenate(first), np.concatenate(second)


def refit(model, val: Dataset, strengths: list[float], subsets: int, seed: int, batch: int, device) -> Refit:
    """DFR of `model` on `val` (its labels and its `group` column); see the module docstring."""
    rng = np.random.default_rng(seed)
    y = val.manifest["label"].to_numpy().astype(np.int64)
    groups = val.manifest["group"].to_numpy().astype(np.int64)
    model = model.to(device)
    n_classes = last_linear(model).out_features
    f = features(model, val.images, batch, device)
    mean, std = f.mean(0), f.std(0) + 1e-6
    z = (f - mean) / std
    fit_rows, score_rows = halves(groups, rng)
    scores: dict[float, float] = {}
    for c in strengths:
        w, b = fit_layer(z[fit_rows], y[fit_rows], groups[fit_rows], n_classes, c, subsets, rng)
        scores[c] = worst_group_acc((z[score_rows] @ w.T + b).argmax(1) == y[score_rows], groups[score_rows])
    best = max(strengths, key=lambda c: (scores[c], -strengths.index(c)))
    w, b = fit_layer(z, y, groups, n_classes, best, subsets, rng)
    out = copy.deepcopy(model).cpu().eval()
    new = last_linear(out)
    with torch.no_grad():  # w (x - mean) / std + b = (w / std) x + (b - (w / std) mean)
        new.weight.copy_(torch.from_numpy(w / std).to(new.weight.dtype))
        new.bias.copy_(torch.from_numpy(b - (w / std) @ mean).to(new.bias.dtype))
    return Refit(out, best, scores)
