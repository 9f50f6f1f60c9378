"""GAN training: resume after an interruption continues the same run (DistributedDataParallel: tests/test_ddp.py)."""


import numpy as np
import pytest
import torch

from advmix.gan.training import GanConfig, diff_augment, fingerprint, frechet_distance, train_gan
from advmix.params import GanParams

TINY = {"style_dim": 32, "n_mlp": 2, "channel_base": 256, "channel_max": 32, "batch": 4, "r1_every": 2,
        "eval_samples": 16}


def images(n=24, res=16, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, res, res, 3), dtype=np.uint8)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_continues_the_same_run(tmp_path):
    p = GanParams(iterations=6, checkpoint_minutes=1e-6, **TINY)  # a checkpoint after every iteration
    data = images()
    full = train_gan(data, GanConfig(p, 0, True), state_path=tmp_path / "full.pt")

    def crash(done, stats):
        if done == 4:
            raise Interrupt  # like a kill: the state on disk is the one written after iteration 3

    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        train_gan(data, GanConfig(p, 0, True), state_path=state, progress=crash)
    assert torch.load(state, weights_only=True)["iteration"] == 3
    resumed = train_gan(data, GanConfig(p, 0, True), state_path=state)
    assert resumed.resumed_from == 3
    for (name, a), b in zip(full.G_ema.state_dict().items(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b), name
    # a state from other params is not resumed
    other = GanParams(iterations=6, checkpoint_minutes=1e-6, **{**TINY, "lr": 1e-3})
    assert train_gan(data, GanConfig(other, 0, True), state_path=state).resumed_from == 0


def test_mirror_false_turns_the_flip_augmentation_off(tmp_path):
    """Digits: a run told the images are not mirror-invariant is the run without the flip, bit for bit."""
    data = images()
    flip = GanParams(iterations=3, augment=["flip", "translation"], **TINY)
    no_mirror = train_gan(data, GanConfig(flip, 0, False), state_path=tmp_path / "a.pt")
    no_flip = train_gan(data, GanConfig(GanParams(iterations=3, augment=["translation"], **TINY), 0, True),
                        state_path=tmp_path / "b.pt")
    flipped = train_gan(data, GanConfig(flip, 0, True), state_path=tmp_path / "c.pt")
    a, b, c = (r.G_ema.state_dict() for r in (no_mirror, no_flip, flipped))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_non_finite_gan_loss_stops_training_naming_the_iteration(tmp_path):
    from advmix.gan.training import GanDivergedError

    bad = GanParams(iterations=50, lr=1e30, **TINY)
    with pytest.raises(GanDivergedError, match=r"train-gan: \w+ is (nan|inf|-inf) at iteration \d+; likely"):
        train_gan(images(), GanConfig(bad, 0, True), state_path=tmp_path / "state.pt")


def test_fingerprint_tracks_params_seed_and_data():
    p, data = GanParams(**TINY), images()
    assert fingerprint(GanConfig(p, 0, True), data) == fingerprint(GanConfig(p.model_copy(update={"checkpoint_minutes": 9}), 0, True), data)
    assert fingerprint(GanConfig(p, 0, True), data) != fingerprint(GanConfig(p, 1, True), data)
    assert fingerprint(GanConfig(p, 0, True), data) != fingerprint(GanConfig(p, 0, True), images(seed=1))


def test_diff_augment_is_differentiable_and_keeps_shape():
    x = torch.randn(5, 3, 16, 16, requires_grad=True)
    y = diff_augment(x, ["translation", "color", "cutout"], torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_frechet_distance_zero_for_same_and_grows_with_shift():
    a = np.random.default_rng(0).normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(4.0, rel=0.05)
