"""Both trainers under torchrun on CPU (gloo, 2 ranks), from one launch: a torchrun and its ranks cost seconds of
imports each, so the GAN and the classifier share them."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_SIZES
from test_gan_train import TINY as TINY_GAN
from test_train import TINY_G, TINY_TRAIN, tsv_rows


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    """The folder where one 2-rank torchrun trained the GAN twice and then an AdvMix classifier."""
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np, torch, torch.distributed as dist
        torch.set_num_threads(1)
        from pathlib import Path
        from advmix.data.build import build_dataset
        from advmix.gan.networks import Generator
        from advmix.gan.training import GanConfig, train_gan
        from advmix.params import GanParams, parse_params
        from advmix.attacks import AttackConfig
        from advmix.classifier_training import TrainConfig, train_classifier
        tmp = Path({str(tmp)!r})

        def flat(state):
            return torch.cat([v.flatten().float() for v in state.values()])

        def same_on_every_rank(x, world):
            everyone = [torch.zeros_like(x) for _ in range(world)]
            dist.all_gather(everyone, x)
            return all(torch.equal(everyone[0], e) for e in everyone)

        # the GAN; then the same world size again, from scratch: DDP's all-reduce keeps the run deterministic
        data = np.random.default_rng(0).integers(0, 255, (24, 16, 16, 3), dtype=np.uint8)
        p = GanParams(iterations=3, checkpoint_minutes=1e-6, **{TINY_GAN!r})
        run = train_gan(data, GanConfig(p, 0, True), state_path=tmp / "gan-state.pt")
        assert same_on_every_rank(flat(run.G_ema.state_dict()), run.world), "GAN ranks diverged"
        again = train_gan(data, GanConfig(p, 0, True), state_path=tmp / "gan-again.pt")
        assert torch.equal(flat(run.G_ema.state_dict()), flat(again.G_ema.state_dict())), "GAN not deterministic"
        (tmp / f"gan-rank{{run.rank}}.txt").write_text(f"world {{run.world}} ok")  # a file per rank: stdout interleaves

        # an AdvMix classifier on tiny faces with a random generator
        p = parse_params({{"data": {{"sizes": {TINY_SIZES!r}, "resolution": 16}}, "train": {TINY_TRAIN!r}}})
        p = p.model_copy(update={{"train": p.train.model_copy(update={{"epochs": 1}})}})
        ds = build_dataset(p)
        torch.manual_seed(0)
        G = Generator(**{TINY_G!r})
        lat = np.random.default_rng(0).normal(size=(40, G.n_latent, G.style_dim)).astype(np.float32)
        config = TrainConfig(p.train, AttackConfig.from_params(p.train, "any", [2, 3, 4, 5]), p.seed)
        run = train_classifier("advmix", ds.split("train"), ds.split("val"), config, tmp / "train-state.pt",
                               tmp / "live", G=G, latents=lat)
        assert same_on_every_rank(flat(run.last_state), run.world), "classifier ranks diverged"
        (tmp / f"train-rank{{run.rank}}.txt").write_text(f"world {{run.world}} steps {{run.steps_per_epoch}} ok")
        dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29531", str(script)], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_gan_ddp_gloo_two_ranks(gloo):
    for rank in (0, 1):
        assert (gloo / f"gan-rank{rank}.txt").read_text() == "world 2 ok"
    state = torch.load(gloo / "gan-state.pt", weights_only=True)
    assert state["world"] == 2 and state["iteration"] == 3 and len(state["ranks"]) == 2


@pytest.mark.slow
def test_classifier_ddp_gloo_two_ranks(gloo):
    for rank in (0, 1):
        assert (gloo / f"train-rank{rank}.txt").read_text() == "world 2 steps 5 ok"
    assert len(tsv_rows(gloo / "live" / "plots" / "metrics" / "val" / "acc.tsv")) == 1
