"""The mixing operator, the layer presets and the swap analysis, on a small real generator."""

import numpy as np
import pytest
import torch

from advmix.gan.layers import analyze, pick_partners, search_layers, set_name, swap_scores
from advmix.gan.networks import Generator
from advmix.mixing import layer_groups, mix, resolve_layers
from advmix.probes import build_probe


def test_mix_hard_swap_and_soft():
    a, b = torch.zeros(2, 6, 3), torch.ones(2, 6, 3)
    hard = mix(a, b, 1.0, [2, 3])
    assert hard[:, [2, 3]].eq(1).all() and hard[:, [0, 1, 4, 5]].eq(0).all()
    soft = mix(a, b, torch.tensor([[0.25, 0.5], [1.0, 0.0]]), [0, 5])
    assert soft[0, 0, 0] == 0.25 and soft[0, 5, 0] == 0.5 and soft[1, 0, 0] == 1 and soft[1, 5, 0] == 0
    alpha = torch.full((2,), 0.5, requires_grad=True)
    mix(a, b, alpha, [1]).sum().backward()
    assert alpha.grad.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("res,n", [(16, 6), (32, 8), (64, 10), (1024, 18)])
def test_presets_partition_wplus(res, n):
    g = layer_groups(res)
    assert sorted(g["coarse"] + g["middle"] + g["fine"]) == list(range(n))
    assert g["middle+fine"] == g["middle"] + g["fine"]
    if res == 1024:  # the StyleGAN paper's figure: 4-8 px coarse, 16-32 px middle, 64-1024 px fine
        assert g["coarse"] == [0, 1, 2, 3] and g["middle"] == [4, 5, 6, 7] and g["fine"] == list(range(8, 18))


def test_resolve_layers_errors(tmp_path):
    assert resolve_layers([3, 2, 3], 32) == [2, 3]
    with pytest.raises(ValueError, match="outside 0..7"):
        resolve_layers([8], 32)
    with pytest.raises(FileNotFoundError, match="analyze-layers"):
        resolve_layers("auto", 32, tmp_path / "layers.json")
    (tmp_path / "layers.json").write_text('{"auto": [2, 3, 4]}')
    assert resolve_layers("auto", 32, tmp_path / "layers.json") == [2, 3, 4]


def test_partner_rule():
    labels = np.array([0, 0, 1, 1, 1, 0])
    same = pick_partners(labels, "same_label", np.random.default_rng(0))
    assert (labels[same] == labels).all() and (same != np.arange(6)).all()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    G = Generator(16, style_dim=32, n_mlp=2, channel_base=256, channel_max=32).eval()
    heads = {"label": 2, "skin_dark": 2, "hair": 3}
    probe = build_probe(16, heads, width=8).eval()
    with torch.no_grad():
        ws = G.make_ws(torch.randn(32, 32))
    return G, probe, ws


def test_swapping_every_layer_is_the_partner(small):
    """A mix that takes every layer from b is b: every attribute moves, the label moves where labels differ."""
    from advmix.gan.layers import read

    G, probe, ws = small
    reading = read(G, probe, ws)
    partners = pick_partners(reading["label"], "any", np.random.default_rng(0))
    scores = swap_scores(G, probe, ws, reading, partners, list(range(G.n_latent)))
    assert scores["label_change"] == pytest.approx(np.mean(reading["label"] != reading["label"][partners]))
    for head in ("skin_dark", "hair"):
        if not np.isnan(scores[f"{head}_transfer"]):
            assert scores[f"{head}_transfer"] == 1.0


def test_analysis_schema_and_auto_respects_threshold(small):
    G, probe, ws = small
    res = analyze(G, probe, ws, "skin_dark", "auto", "same_label", 0.2, 0.5, seed=0)
    assert set(res["layers"]) >= {str(i) for i in range(G.n_latent)} | {"coarse", "middle", "fine"}
    assert {"label_change", "skin_dark_transfer", "hair_transfer"} <= set(res["layers"]["0"])
    pert = res["perturbation"]
    assert pert["layers"] == res["auto"] and pert["partners"] == "same_label"
    assert set(pert["any_partner"]) == {"label_change", "spurious_transfer"}
    cands = res["auto_candidates"]
    assert set_name(res["auto"]) in cands and res["n_search"] + res["n_held_out"] == len(ws)
    qualifying = [k for k, v in cands.items() if v["label_change"] <= 0.2 and v["skin_dark_transfer"] >= 0.5]
    if qualifying:  # the smallest qualifying set
        assert set_name(res["auto"]) in qualifying
        assert len(res["auto"]) == min(len(k.split(",")) if "," in k else
                                       int(k.split("-")[1]) - int(k.split("-")[0]) + 1 for k in qualifying)
    fixed = analyze(G, probe, ws[:12], "skin_dark", "fine", "any", 0.2, 0.5, seed=0)
    assert fixed["perturbation"]["layers"] == layer_groups(16)["fine"]


def test_a_perturbation_set_of_every_row_is_flagged():
    from advmix.stages.analyze_layers import whole_code_warning

    assert whole_code_warning([0, 1, 2, 3], 8, "same_label") is None
    assert "same class" in whole_code_warning(list(range(8)), 8, "same_label")
    assert "label included" in whole_code_warning(list(range(8)), 8, "any")


def test_a_bar_that_no_set_meets_is_recorded_and_warned_in_one_line(small):
    """With a bar no set can meet (no label change at all and every pair moved), layers.json says so and the stage's
    warning names the best set, its figures and the bar; a bar that is met gives no warning."""
    from advmix.stages.analyze_layers import bar_warning

    G, probe, ws = small
    res = analyze(G, probe, ws, "skin_dark", "auto", "any", 0.0, 1.0, seed=0)
    bar = res["bar"]
    assert bar["met"] is False and (bar["max_label_change"], bar["min_transfer"]) == (0.0, 1.0)
    assert bar["auto"] == set_name(res["auto"]) and bar["label_change"] == res["auto_candidates"][bar["auto"]][
        "label_change"]
    line = bar_warning(bar, "skin_dark")
    assert "\n" not in line and f"W+ {bar['auto']}" in line and "label change <= 0%" in line
    assert "skin_dark transfer >= 100%" in line and "AdvMix will rarely move skin_dark" in line
    easy = analyze(G, probe, ws, "skin_dark", "auto", "any", 1.0, 0.0, seed=0)["bar"]
    assert easy["met"] is True and bar_warning(easy, "skin_dark") is None


def test_greedy_search_finds_a_set_that_no_range_is():
    """Rows 0 and 2 move the attribute, row 1 carries the label: no contiguous range holds both bounds,
    the greedy path finds {0, 2}."""
    def score(layers):
        return {"label_change": 0.5 if 1 in layers else 0.02 * len(layers),
                "skin_dark_transfer": 0.45 * sum(r in (0, 2) for r in layers)}

    auto, measured = search_layers(score, 4, "skin_dark_transfer", 0.1, 0.7)
    assert auto == [0, 2] and set_name(auto) == "0,2" and "0-2" in measured
    # a bound that nothing meets: the highest transfer within the label bound
    auto, _ = search_layers(score, 4, "skin_dark_transfer", 0.1, 0.95)
    assert auto == [0, 2]
    # nothing keeps the label: the set that changes it least
    auto, _ = search_layers(lambda layers: {"label_change": 0.5 + 0.01 * layers[0], "skin_dark_transfer": 1.0},
                            3, "skin_dark_transfer", 0.1, 0.7)
    assert auto == [0]


def test_partners_from_another_bank_share_the_class_under_same_label():
    labels = np.array([0, 1, 0, 1, 1])
    bank_labels = np.array([1, 1, 0, 1, 0, 0, 1])
    got = pick_partners(labels, "same_label", np.random.default_rng(0), bank_labels)
    assert (bank_labels[got] == labels).all()
    anyone = pick_partners(labels, "any", np.random.default_rng(0), bank_labels)
    assert ((0 <= anyone) & (anyone < len(bank_labels))).all()


class MeanReader(torch.nn.Module):
    """A hand-set reader: 'label' is whether red outweighs blue, 'skin_dark' whether the image is brighter than
    `cut`. Deterministic and varied on a random generator's images, where a random probe reads one class."""

    def __init__(self, cut: float, tint: float):
        super().__init__()
        self.cut, self.tint = cut, tint

    def forward(self, x):
        bright = x.mean((1, 2, 3)) - self.cut
        red = (x[:, 0] - x[:, 2]).mean((1, 2)) - self.tint
        return {"label": torch.stack([-red, red], 1), "skin_dark": torch.stack([-bright, bright], 1)}


def test_as_trained_composes_the_mixes_as_training_does(small):
    """With the residual and no swapped row a training mix is the real image itself: nothing moves. Without the
    residual and every row swapped it is the partner's reconstruction, whose reading is the partner's real one
    when the real images are the generator's own (quantised to uint8). The pairs are the rule's draw, as perturbation_on_bank's."""
    from advmix.gan.layers import as_trained
    from advmix.images import to_uint8
    from advmix.mixing import synthesize

    G, _, ws = small
    with torch.no_grad():
        x = synthesize(G, ws)
    reader = MeanReader(float(x.mean((1, 2, 3)).median()), float((x[:, 0] - x[:, 2]).mean((1, 2)).median()))
    images, labels = to_uint8(x), np.zeros(len(ws), dtype=int)
    kept = as_trained(G, reader, ws, images, labels, "skin_dark", [], "any", 0)[True]
    assert kept["residual"] is True and kept["n"] == len(ws) and kept["pairs_differing_in_spurious"] > 0
    assert kept["label_change"] == 0.0 and kept["spurious_transfer"] == 0.0
    swapped = as_trained(G, reader, ws, images, labels, "skin_dark", list(range(G.n_latent)), "any", 0)
    assert swapped[False]["residual"] is False and swapped[False]["spurious_transfer"] >= 0.9
    # the same pairs with the residual: the partner's reconstruction plus the source's own loss
    assert swapped[True]["pairs_differing_in_spurious"] == swapped[False]["pairs_differing_in_spurious"]
    swapped = swapped[False]
    # the pairs are the rule's draw from the seed, as perturbation_on_bank draws them
    from advmix.probes import predict

    dark = predict(reader, images)["skin_dark"].argmax(1)
    partners = pick_partners(labels, "any", np.random.default_rng(0))
    assert swapped["pairs_differing_in_spurious"] == int((dark != dark[partners]).sum())


def test_a_set_that_misses_the_bar_as_trained_is_warned_with_its_cause():
    from advmix.stages.analyze_layers import as_trained_warning

    bar = {"met": True, "max_label_change": 0.1, "min_transfer": 0.7}
    trained = {"residual": True, "layers": [0, 1, 3, 5], "spurious": "glasses", "label_change": 0.005,
               "spurious_transfer": 0.523, "other_residual": {"label_change": 0.006, "spurious_transfer": 0.805}}
    line = as_trained_warning(trained, bar)
    assert "\n" not in line and "W+ 0,1,3,5" in line and "52.3%" in line and "80.5%" in line
    assert "train.residual: false" in line
    assert as_trained_warning({**trained, "spurious_transfer": 0.75}, bar) is None
    assert as_trained_warning(trained, {**bar, "met": False}) is None  # bar_warning speaks then
