"""DFR (advmix/dfr.py): a last layer refit on group-balanced val undoes a planted shortcut; the refit is seeded."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from advmix.data.store import Dataset
from advmix.dfr import balanced_draw, features, fit_layer, halves, refit
from advmix.groups import worst_group_acc


def toy_split(counts: dict[tuple[int, int], int], seed: int) -> Dataset:
    """4 x 4 images: channel 0 carries the label through noise, channel 1 the spurious attribute cleanly."""
    rng = np.random.default_rng(seed)
    rows = [(y, s) for (y, s), n in counts.items() for _ in range(n)]
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows])
    img = np.full((len(rows), 4, 4, 3), 100.0)
    img[..., 0] += 60 * y[:, None, None] + rng.normal(0, 25, (len(rows), 4, 4))
    img[..., 1] += 80 * s[:, None, None] + rng.normal(0, 5, (len(rows), 4, 4))
    manifest = pd.DataFrame({"label": y, "skin": s, "group": 2 * y + s})
    return Dataset(np.clip(img, 0, 255).astype(np.uint8), manifest, {"n_classes": 2, "spurious": "skin"})


def shortcut_model() -> nn.Module:
    """Features: the mean of channel 0 and of channel 1; the head reads channel 1 (the shortcut) alone."""
    body = nn.Linear(48, 2, bias=False)
    with torch.no_grad():
        body.weight.zero_()
        body.weight[0, :16] = 1 / 16  # NCHW flattened: channel 0 first
        body.weight[1, 16:32] = 1 / 16
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, -5.0], [0.0, 5.0]]))
        head.bias.copy_(torch.tensor([0.5, -0.5]))
    return nn.Sequential(nn.Flatten(), body, nn.ReLU(), head).eval()


def test_dfr_undoes_a_planted_shortcut():
    val = toy_split({(0, 0): 100, (1, 1): 100, (0, 1): 20, (1, 0): 20}, seed=0)
    test = toy_split({(0, 0): 100, (1, 1): 100, (0, 1): 100, (1, 0): 100}, seed=1)
    model = shortcut_model()
    y, groups = test.manifest["label"].to_numpy(), test.manifest["group"].to_numpy()

    def wga(m):
        with torch.no_grad():
            from advmix.images import to_tensor
            return worst_group_acc(m(to_tensor(test.images)).numpy().argmax(1) == y, groups)

    before = wga(model)
    out = refit(model, val, [1.0, 0.1, 0.01], subsets=5, seed=0, batch=64, device=torch.device("cpu"))
    after = wga(out.model)
    assert before < 0.05 and after > 0.9, (before, after)
    assert set(out.half_worst_group_acc) == {1.0, 0.1, 0.01} and out.strength in out.half_worst_group_acc
    for name, value in model.state_dict().items():  # only the last layer changed; the input model is untouched
        assert torch.equal(value, shortcut_model().state_dict()[name]), name
        if not name.startswith("3."):
            assert torch.equal(value, out.model.state_dict()[name]), name
    again = refit(model, val, [1.0, 0.1, 0.01], subsets=5, seed=0, batch=64, device=torch.device("cpu"))
    assert torch.equal(again.model[3].weight, out.model[3].weight)  # seeded


def test_balanced_draws_and_halves():
    groups = np.array([0] * 30 + [1] * 3 + [2] * 30 + [3] * 1)
    rng = np.random.default_rng(0)
    draw = balanced_draw(groups, rng)
    assert np.bincount(groups[draw]).tolist() == [1, 1, 1, 1] and len(set(draw.tolist())) == 4
    first, second = halves(groups, rng)
    assert not set(first) & set(second) and len(first) + len(second) == len(groups)
    assert np.bincount(groups[first]).tolist() == [15, 2, 15, 1]  # a group of one goes to the fitting half


def test_features_are_the_inputs_of_the_last_linear_layer():
    ds = toy_split({(0, 0): 3, (1, 1): 3}, seed=0)
    f = features(shortcut_model(), ds.images, batch=4, device=torch.device("cpu"))
    from advmix.images import to_tensor
    x = to_tensor(ds.images)
    expected = torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2))], 1).clamp(min=0).double().numpy()
    assert f.shape == (6, 2) and np.allclose(f, expected, atol=1e-6)


def test_a_draw_of_one_class_is_refused():
    val = toy_split({(0, 0): 10, (0, 1): 10}, seed=0)
    with pytest.raises(ValueError, match="one class only"):
        refit(shortcut_model(), val, [1.0], subsets=1, seed=0, batch=8, device=torch.device("cpu"))


def test_a_ten_class_refit_is_one_vs_rest():
    """colordigits has ten classes: liblinear fits two, so each class gets its own l1 model against the rest."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 12)
    x = rng.normal(size=(len(y), 16)) + 3.0 * np.eye(16)[y]  # class c lights up feature c
    weight, bias = fit_layer(x, y, y * 2 + rng.integers(0, 2, len(y)), 10, 1.0, 2, np.random.default_rng(1))
    assert weight.shape == (10, 16) and bias.shape == (10,)
    assert ((x @ weight.T + bias).argmax(1) == y).mean() > 0.9
