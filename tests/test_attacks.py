"""The inner maximisations on a tiny generator and a tiny classifier fitted to tiny synthfaces."""

import pytest
import torch
import torch.nn.functional as F
from conftest import attack_config, tiny_params

from advmix.attacks import (
    Batch,
    LatentBank,
    advmix_attack,
    colorjitter,
    huejitter,
    pgd_linf,
    randmix,
    residuals,
)
from advmix.data.build import build_dataset
from advmix.gan.networks import Generator
from advmix.images import to_tensor, to_uint8
from advmix.models import build_model

torch.set_num_threads(1)
LAYERS = (2, 3, 4, 5)  # of 6 at 16 px


@pytest.fixture(scope="module")
def setup():
    """A classifier fitted (in train mode, BatchNorm included) to 40 faces, a random tiny G and random codes."""
    ds = build_dataset(tiny_params(resolution=16)).split("train")
    x, y = to_tensor(ds.images), torch.tensor(ds.manifest["label"].to_numpy())
    torch.manual_seed(0)
    G = Generator(16, style_dim=32, n_mlp=2, channel_base=256, channel_max=32).eval().requires_grad_(False)
    with torch.no_grad():
        w = G.make_ws(torch.randn(len(x), 32))
    model = build_model("smallcnn", 2, 16, 8)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, G, x, y, w


def mean_loss(model, x, y):
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("residual", [True, False])
def test_advmix_beats_randmix_beats_clean(setup, residual):
    model, G, x, y, w = setup
    bank = LatentBank(w, y)
    cfg = attack_config(layers=LAYERS, partners="any", residual=residual, k=4, steps=5, step_size=0.25)
    batch = Batch(x, y, w, torch.arange(len(x)))
    clean = mean_loss(model, x, y)
    model.train()
    x_adv, y_adv = advmix_attack(model, batch, bank, G, cfg, torch.Generator().manual_seed(0))
    assert model.training, "the classifier must come back in train mode"
    x_rand, y_rand = randmix(model, batch, bank, G, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(y_adv, y) and torch.equal(y_rand, y)
    assert x_adv.shape == x.shape and x_adv.abs().max() <= 1 and x_rand.abs().max() <= 1
    adv, rand = mean_loss(model, x_adv, y), mean_loss(model, x_rand, y)
    # measured: clean 0.000, rand 0.02-0.7 (residual) / 5.9-6.5 (none), adv 7.7-10 / 11-12 over three seeds
    assert adv > rand + 1.0 > clean + 1.0, (clean, rand, adv)
    assert rand > clean + 1e-3, (clean, rand)


def test_residual_of_an_identity_mix_is_the_image(setup):
    model, G, x, y, w = setup
    cfg = attack_config(layers=LAYERS, residual=True, k=2, steps=2, step_size=0.25)
    # every example and every partner share one code: every mix is the identity, so x_tilde = x
    code = w[:1].expand(4, -1, -1).clone()
    out, _ = advmix_attack(model, Batch(x[:4], y[:4], code), LatentBank(code, y[:4]), G, cfg,
                           torch.Generator().manual_seed(0))
    assert torch.allclose(out, x[:4], atol=1e-5)


def test_one_batched_pass_for_the_hard_mixes(setup, monkeypatch):
    model, G, x, y, w = setup
    sizes = []
    real = G.synthesis

    def counting(ws, noise_mode="const"):
        sizes.append(len(ws))
        return real(ws, noise_mode=noise_mode)

    monkeypatch.setattr(G, "synthesis", counting)
    cfg = attack_config(layers=LAYERS, k=4, steps=3, residual=False, step_size=0.25)
    advmix_attack(model, Batch(x[:8], y[:8], w[:8], torch.arange(8)), LatentBank(w, y), G, cfg,
                  torch.Generator().manual_seed(0))
    assert sizes == [8 * 4] + [8] * (3 + 1)  # all hard mixes at once, then one pass per step and the last


def test_a_supplied_residual_saves_its_synthesis_and_gives_the_same_mixes(setup, monkeypatch):
    """The residual x - G(w) is fixed per image: training computes it once per split (`residuals`), evaluation once
    per chunk. Given in Batch.residual, the attacks skip that generator pass and return the very same images."""
    model, G, x, y, w = setup
    x8 = to_uint8(x[:8])  # the images as a dataset holds them
    xb = to_tensor(x8)
    own = residuals(G, x8, w[:8], chunk=8)  # one chunk: the same synthesis the attack would run
    assert torch.equal(own, xb - G.synthesis(w[:8]))
    split = residuals(G, x8, w[:8], chunk=3)  # a split in chunks of another size: equal up to float rounding
    assert torch.allclose(split, own, atol=1e-5)
    sizes = []
    real = G.synthesis
    monkeypatch.setattr(G, "synthesis", lambda ws, noise_mode="const": sizes.append(len(ws)) or real(ws, noise_mode))
    cfg = attack_config(layers=LAYERS, residual=True, k=4, steps=2, step_size=0.25)
    outs = {}
    for name, res in (("synthesised", None), ("supplied", own)):
        sizes.clear()
        batch = Batch(xb, y[:8], w[:8], torch.arange(8), residual=res)
        adv, _ = advmix_attack(model, batch, LatentBank(w, y), G, cfg, torch.Generator().manual_seed(0))
        rand, _ = randmix(model, batch, LatentBank(w, y), G, cfg, torch.Generator().manual_seed(0))
        outs[name] = (adv, rand, list(sizes))
    assert torch.equal(outs["supplied"][0], outs["synthesised"][0])
    assert torch.equal(outs["supplied"][1], outs["synthesised"][1])
    assert outs["synthesised"][2] == [8, 32, 8, 8, 8, 8, 8]  # advmix: residual, hard mixes, 2 steps, last; randmix
    assert outs["supplied"][2] == [32, 8, 8, 8, 8]  # the two residual passes gone


def test_advmix_only_moves_alpha_within_bounds_and_keeps_batchnorm_stats(setup):
    model, G, x, y, w = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    cfg = attack_config(layers=LAYERS, k=2, steps=2, residual=False, step_size=0.25)
    a, _ = advmix_attack(model, Batch(x[:6], y[:6], w[:6], torch.arange(6)), LatentBank(w, y), G, cfg,
                         torch.Generator().manual_seed(3))
    b, _ = advmix_attack(model, Batch(x[:6], y[:6], w[:6], torch.arange(6)), LatentBank(w, y), G, cfg,
                         torch.Generator().manual_seed(3))
    assert torch.equal(a, b), "deterministic for a fixed generator state"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in G.parameters())


def test_pgd_raises_the_loss_inside_the_ball(setup):
    model, _, x, y, _ = setup
    cfg = attack_config(epsilon=8 / 255, pgd_steps=5, pgd_step_size=2 / 255)
    model.train()
    x_adv, y_adv = pgd_linf(model, Batch(x, y), None, None, cfg, torch.Generator().manual_seed(0))
    assert model.training and torch.equal(y_adv, y)
    assert (x_adv - x).abs().max() <= 2 * 8 / 255 + 1e-6
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    assert mean_loss(model, x_adv, y) > mean_loss(model, x, y) + 0.1


def test_partner_rules():
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 2])
    bank = LatentBank(torch.zeros(7, 4, 3), labels)
    gen = torch.Generator().manual_seed(0)
    rows = torch.arange(7)
    same = bank.partners(labels, 200, "same_label", gen, rows)
    assert (labels[same] == labels[:, None]).all()
    assert not (same[:6] == rows[:6, None]).any(), "nobody is their own partner while someone else qualifies"
    assert (same[6] == 6).all(), "a class of one: the only partner is itself (an identity mix)"
    assert all(set(same[i].tolist()) == {j for j in range(7) if labels[j] == labels[i] and j != i} for i in range(6))
    anyone = bank.partners(labels, 300, "any", gen, rows)
    assert not (anyone == rows[:, None]).any()
    assert set(anyone[0].tolist()) == set(range(1, 7))
    free = bank.partners(torch.tensor([0, 1]), 50, "any", gen)  # examples from outside the bank: anyone at all
    assert set(free.flatten().tolist()) == set(range(7))
    with pytest.raises(ValueError, match="no example of class"):
        bank.partners(torch.tensor([3]), 1, "same_label", gen)
    with pytest.raises(ValueError, match="partner rule"):
        bank.partners(labels, 1, "nearest", gen)


def test_advmix_same_label_mixes_only_same_label_codes(setup):
    """Codes that encode their label in every layer: a same-label mix leaves every code's label intact."""
    model, G, x, y, _ = setup
    w = torch.zeros(len(y), G.n_latent, G.style_dim)
    w[:, :, 0] = y[:, None].float() * 10 + torch.rand(len(y), 1)  # coordinate 0 says the label
    seen = []
    real = G.synthesis

    def spy(ws, noise_mode="const"):
        seen.append(ws.detach().clone())
        return real(ws, noise_mode=noise_mode)

    G.synthesis = spy
    try:
        cfg = attack_config(layers=LAYERS, partners="same_label", k=4, steps=1, residual=False, step_size=0.25)
        advmix_attack(model, Batch(x, y, w, torch.arange(len(y))), LatentBank(w, y), G, cfg,
                      torch.Generator().manual_seed(0))
    finally:
        del G.synthesis
    label_of_code = (seen[0][:, :, 0] >= 10).long()  # [N*K, L]
    assert (label_of_code == y.repeat_interleave(4)[:, None]).all()


def rare_mode_bank(seed: int = 0):
    """Two classes of 200 codes; in each, 10 (5%) sit in a distant mode of row 1 (a rare nuisance value)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(400, 3, 8, generator=g)
    labels = torch.arange(400) % 2
    rare = torch.zeros(400, dtype=torch.bool)
    rare[torch.cat([torch.arange(0, 40, 2)[:10], torch.arange(1, 41, 2)[:10]])] = True
    w[rare, 1] += 6.0
    return w, labels, rare


def test_stratified_partners_reach_a_rare_mode_that_uniform_draws_miss():
    w, labels, rare = rare_mode_bank()
    bank = LatentBank(w, labels, seed=0)
    rows = torch.arange(len(labels))
    common = ~rare
    uniform = bank.partners(labels, 8, "same_label", torch.Generator().manual_seed(0), rows)
    strat = bank.partners(labels, 8, "same_label", torch.Generator().manual_seed(0), rows, strata=8, layers=(1,))
    for got in (uniform, strat):
        assert (labels[got] == labels[:, None]).all() and not (got == rows[:, None]).any()
    reach_uniform = rare[uniform[common]].any(1).float().mean().item()
    reach_strat = rare[strat[common]].any(1).float().mean().item()
    # uniform: 1 - 0.95^8 = 0.34 expected; stratified: one draw lands in the rare mode's own cluster
    assert reach_uniform < 0.5, reach_uniform
    assert reach_strat == 1.0, reach_strat
    assert len(set(strat[0].tolist())) == 8, "K = strata: one partner per cluster, no repeats"


def test_stratified_partners_are_seeded():
    w, labels, _ = rare_mode_bank()
    rows = torch.arange(len(labels))

    def draw(bank_seed: int, draw_seed: int) -> torch.Tensor:
        bank = LatentBank(w, labels, seed=bank_seed)
        return bank.partners(labels, 4, "any", torch.Generator().manual_seed(draw_seed), rows, strata=5, layers=(1, 2))

    assert torch.equal(draw(0, 0), draw(0, 0))
    assert not torch.equal(draw(0, 0), draw(0, 1))
    with pytest.raises(ValueError, match="mixing layers"):
        LatentBank(w, labels).partners(labels, 4, "any", torch.Generator(), strata=5)


def test_val_selection_reads_no_group_label_and_is_seeded(setup):
    """The hyperparameter-selection figure: AdvMix-robust accuracy on val, with no group column at hand."""
    import numpy as np

    from advmix.data.store import Dataset
    from advmix.metrics import EvalConfig, robustness, uniform_subset, val_selection
    from advmix.params import parse_params

    model, G, x, _, w = setup
    p = parse_params({"mixing": {"partners": "any"}, "evaluate": {"val_robust_images": 24, "partners_k": 4, "steps": 2,
                                                                    "random_mixes": 2}})
    images = ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    val = Dataset(images, build_dataset(tiny_params(resolution=16)).split("train").manifest.drop(columns="group"),
                  {"n_classes": 2})
    cfg = EvalConfig(p.evaluate, p.train, p.mixing.partners, p.seed)
    first = val_selection(model, val, w.numpy(), G, list(LAYERS), cfg, torch.device("cpu"))
    assert first == val_selection(model, val, w.numpy(), G, list(LAYERS), cfg, torch.device("cpu"))
    assert first["val_robust_images"] == 24
    rows = uniform_subset(len(val), 24, p.seed)
    assert len(set(rows.tolist())) == 24 and (np.diff(rows) > 0).all()
    clean = robustness(model, val, w.numpy(), G, list(LAYERS), cfg, torch.device("cpu"), rows=rows, pixel=False)
    assert "pgd_robust_acc" not in clean
    # the fitted model is right on its training faces; swapping the nuisance rows of a random G breaks many
    assert clean["robust_clean_acc"] > 0.9 and first["val_semantic_robust_acc"] < clean["robust_clean_acc"] - 0.2


def test_colorjitter_is_seeded_per_image_and_full_hue_reaches_further(setup):
    """The control of a colour nuisance: the same seed gives the same images, another seed others; every image
    gets its own draw; labels stay; the full-hue strength moves colours further than the common one."""
    model, _, x, y, _ = setup
    batch, cfg = Batch(x, y), attack_config()
    a, ya = colorjitter(model, batch, None, None, cfg, torch.Generator().manual_seed(3))
    b, _ = colorjitter(model, batch, None, None, cfg, torch.Generator().manual_seed(3))
    c, _ = colorjitter(model, batch, None, None, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(ya, y)
    assert a.shape == x.shape and a.abs().max() <= 1 and not torch.equal(a, x)
    ratio = (a - x).abs().mean((1, 2, 3))
    assert ratio.std() > 0.1 * ratio.mean()  # one draw per image, not one per batch
    hue, _ = huejitter(model, batch, None, None, cfg, torch.Generator().manual_seed(3))
    assert (hue - x).abs().mean() > (a - x).abs().mean()
    state = torch.random.get_rng_state()
    colorjitter(model, batch, None, None, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
