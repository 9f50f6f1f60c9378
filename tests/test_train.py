"""The classifier training loop: resume after a kill, model selection, the `train` command (DDP: tests/test_ddp.py)."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SIZES, save_validated, tiny_params
from typer.testing import CliRunner

from advmix.classifier_training import TrainConfig, lr_factor, train_classifier
from advmix.data.build import build_dataset
from advmix.gan.checkpoints import save_generator
from advmix.gan.networks import Generator
from advmix.models import build_model, load_classifier
from advmix.params import parse_params
from advmix.stages.train import train_config

torch.set_num_threads(1)
TINY_G = {"size": 16, "style_dim": 32, "n_mlp": 2, "channel_base": 256, "channel_max": 32}
TINY_TRAIN = {"model": "smallcnn", "width": 8, "epochs": 3, "batch": 8, "lr": 3e-3, "warmup_epochs": 0.5,
              "checkpoint_minutes": 1e-6, "advmix": {"partners_k": 2, "steps": 2}, "device": "cpu"}


class Kill(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_run():
    """Tiny 16 px faces, a random tiny generator and random W+ codes for the train split."""
    p = parse_params({"data": {"sizes": TINY_SIZES, "resolution": 16}, "train": TINY_TRAIN,
                      "mixing": {"layers": [2, 3, 4, 5]}})
    ds = build_dataset(p)
    torch.manual_seed(0)
    G = Generator(**TINY_G).eval()
    latents = np.random.default_rng(0).normal(size=(TINY_SIZES["train"], G.n_latent, G.style_dim)).astype(np.float32)
    return p, ds.split("train"), ds.split("val"), G, latents


def config(p) -> TrainConfig:
    """What the train stage builds from params (mixing.layers as given)."""
    return train_config(p, p.mixing.layers)


def tsv_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_resume_after_a_kill_mid_epoch_is_bitwise_identical(tiny_run, tmp_path):
    p, train, val, G, latents = tiny_run
    kw = {"G": G, "latents": latents}
    full = train_classifier("advmix", train, val, config(p), tmp_path / "a" / "state.pt", tmp_path / "a", **kw)
    assert full.steps_per_epoch == 5 and not (tmp_path / "a" / "state.pt").exists(), "state removed when done"

    def kill(done, total, stats):
        if done == 7:  # epoch 2, step 2: the state on disk is the one written after step 6
            raise Kill

    state = tmp_path / "b" / "state.pt"
    with pytest.raises(Kill):
        train_classifier("advmix", train, val, config(p), state, tmp_path / "b", progress=kill, **kw)
    saved = torch.load(state, weights_only=True)
    assert (saved["epoch"], saved["step"], len(saved["history"])) == (1, 1, 1)
    resumed = train_classifier("advmix", train, val, config(p), state, tmp_path / "b", **kw)
    assert resumed.resumed_from == {"epoch": 1, "step": 1}
    for name, value in full.last_state.items():
        assert torch.equal(value, resumed.last_state[name]), name
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.history == full.history

    # the dvclive curve continues: one row per epoch, no gap, no duplicate, the same values
    for metric in ("train/loss", "train/adv_acc", "val/acc"):
        a = tsv_rows(tmp_path / "a" / "plots" / "metrics" / f"{metric}.tsv")
        b = tsv_rows(tmp_path / "b" / "plots" / "metrics" / f"{metric}.tsv")
        assert [r["step"] for r in b] == ["0", "1", "2"] and a == b, metric
    summary = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert summary["step"] == 2 and summary["val"]["acc"] == full.history[-1]["val/acc"]


def test_a_state_from_other_params_is_not_resumed(tiny_run, tmp_path):
    p, train, val, _, _ = tiny_run

    def kill(done, total, stats):
        if done == 3:
            raise Kill

    with pytest.raises(Kill):
        train_classifier("nominal", train, val, config(p), tmp_path / "state.pt", None, progress=kill)
    other = p.model_copy(update={"train": p.train.model_copy(update={"lr": 1e-3})})
    run = train_classifier("nominal", train, val, config(other), tmp_path / "state.pt", None)
    assert run.resumed_from == {"epoch": 0, "step": 0}


def test_a_non_finite_loss_stops_training_naming_the_step(tiny_run, tmp_path):
    p, train, val, G, latents = tiny_run
    bad = latents.copy()
    bad[:] = np.nan  # codes that bypassed load_latents' check: every mix is NaN
    with pytest.raises(ValueError, match=r"train advmix: the loss is nan at epoch 1, step 1; likely non-finite"):
        train_classifier("advmix", train, val, config(p), tmp_path / "state.pt", None, G=G, latents=bad)


def test_model_selection_keeps_the_best_val_epoch(tiny_run, tmp_path):
    p, train, val, _, _ = tiny_run
    q = p.model_copy(update={"train": p.train.model_copy(update={"epochs": 4, "lr": 0.05, "schedule": "constant"})})
    run = train_classifier("linf", train, val, config(q), tmp_path / "state.pt", None)
    accs = [h["val/acc"] for h in run.history]
    assert run.best_epoch == int(np.argmax(accs)) and run.best_val_acc == max(accs)
    assert all("train/adv_acc" in h for h in run.history)


def test_each_selection_rule_keeps_the_epoch_it_names_and_its_weights(tiny_run, tmp_path):
    from advmix.classifier_training import score_split

    p, train, val, _, _ = tiny_run
    q = p.model_copy(update={"train": p.train.model_copy(update={"epochs": 5, "lr": 0.05, "schedule": "constant"})})
    run = train_classifier("nominal", train, val, config(q), tmp_path / "state.pt", None)
    hist = run.history
    by_acc = max(range(len(hist)), key=lambda i: (hist[i]["val/acc"], -i))
    by_wg = max(range(len(hist)), key=lambda i: (hist[i]["val/worst_group_acc"], hist[i]["val/acc"], -i))
    assert run.best_epochs == {"label_free": by_acc, "val_worst_group": by_wg}
    for rule, epoch in run.best_epochs.items():  # the weights kept are that epoch's: they measure the same
        model = build_model("smallcnn", 2, 16, 8)
        model.load_state_dict(run.states[rule])
        again = score_split(model, val, 64, torch.device("cpu"))
        assert (again["acc"], again["worst_group_acc"]) == (hist[epoch]["val/acc"], hist[epoch]["val/worst_group_acc"])


def test_select_epoch_on_a_hand_made_history():
    from advmix.classifier_training import select_epoch

    hist = [{"val/acc": a, "val/worst_group_acc": w} for a, w in [(0.90, 0.2), (0.95, 0.1), (0.93, 0.5), (0.94, 0.5),
                                                                  (0.95, 0.0)]]
    assert select_epoch(hist, "label_free") == 1  # the first of the two 0.95
    assert select_epoch(hist, "val_worst_group") == 3  # 0.5 twice: the higher val accuracy
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_epoch(hist, "test")


def test_lr_schedule():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == 1.0 and lr_factor(10, 100, 10, "cosine") == 1.0
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(99, 100, 10, "constant") == 1.0 and lr_factor(0, 100, 0, "constant") == 1.0


@pytest.mark.parametrize("name,width", [("smallcnn", 8), ("resnet18", 8)])
def test_models_take_small_images(name, width):
    for res in (16, 32):
        model = build_model(name, 2, res, width)
        assert model(torch.randn(2, 3, res, res)).shape == (2, 2)
    if name == "resnet18":
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, torch.nn.Identity) and model.fc.in_features == 8 * width
        wide = sum(v.numel() for v in build_model(name, 2, 32, 64).parameters())
        assert 11.0e6 < wide < 11.3e6, "width 64 is the standard ResNet-18"


# -- the `train` command ------------------------------------------------------------------------------------------

CLI_SETS = ["-S", "data.resolution=16", "-S", "train.epochs=1", "-S", "train.batch=8", "-S", "train.width=8",
            "-S", "train.advmix.partners_k=2", "-S", "train.advmix.steps=1", "-S", "train.device=cpu"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path, save_validated(tmp_path, tiny_params(resolution=16))


def run_cli(*args):
    from advmix.cli import app

    res = CliRunner().invoke(app, ["train", *args, *CLI_SETS])
    return res


def check_outputs(root: Path, mode: str, seed: int = 0):
    model, payload = load_classifier(root / "models" / f"classifier-{mode}-s{seed}.pt")
    assert payload["mode"] == mode and payload["config"]["resolution"] == 16 and payload["seed"] == seed
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 2)
    metrics = json.loads((root / "metrics" / "train" / f"{mode}-s{seed}.json").read_text())
    assert list(metrics) == [f"train_{mode}_s{seed}"]
    m = metrics[f"train_{mode}_s{seed}"]
    for split in ("train", "val"):
        assert 0 <= m[f"{split}_acc"] <= 1 and m[f"{split}_error"] == pytest.approx(1 - m[f"{split}_acc"])
    assert not [k for k in m if k.startswith("test")]  # the test splits are measured by `advmix evaluate` alone
    assert m["best_epoch"] == 0 and m["epochs"] == 1
    live = root / "results" / "train" / f"{mode}-s{seed}"
    assert (live / "metrics.json").is_file() and len(tsv_rows(live / "plots" / "metrics" / "train" / "loss.tsv")) == 1
    assert not (live / "state.pt").exists()


def test_cli_train_nominal(project):
    root, _ = project
    res = run_cli("--mode", "nominal")
    assert res.exit_code == 0, res.output
    assert "best epoch 1/1" in res.output
    check_outputs(root, "nominal")

    # a run that fails mid-training leaves the previous run's outputs, its dvclive folder included, as they were
    def snapshot():
        files = [*(root / "results" / "train" / "nominal-s0").rglob("*"), root / "models" / "classifier-nominal-s0.pt"]
        return {f: f.read_bytes() for f in files if f.is_file()}

    before = snapshot()
    res = run_cli("--mode", "nominal", "-S", "train.lr=1e30")
    assert res.exit_code == 1 and re.search(r"the loss is (nan|inf)", res.output), res.output
    assert snapshot() == before
    res = run_cli("--mode", "groupdro", "--seed", "3")
    assert res.exit_code == 0, res.output
    check_outputs(root, "groupdro", 3)
    bad = run_cli("--mode", "mixup")
    assert bad.exit_code == 2 and "expected one of" in bad.output


def test_cli_train_advmix_with_a_saved_generator(project):
    root, _ = project
    res = run_cli("--mode", "advmix")
    assert res.exit_code == 1 and "no such checkpoint" in res.output
    torch.manual_seed(0)
    G = Generator(**TINY_G).eval()
    save_generator(root / "models" / "gan" / "generator.pt", G, {k: v for k, v in TINY_G.items()},
                   G.mean_latent(64))
    res = run_cli("--mode", "advmix")
    assert res.exit_code == 1 and "analyze-layers" in res.output  # mixing.layers: auto needs metrics/layers.json
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "layers.json").write_text(json.dumps({"auto": [2, 3, 4, 5]}))
    res = run_cli("--mode", "advmix")
    assert res.exit_code == 1 and "latents file not found" in res.output
    rng = np.random.default_rng(0)
    (root / "data" / "latents").mkdir(parents=True)
    for split, n in TINY_SIZES.items():
        rows = n + (1 if split == "train" else 0)  # one row too many first
        np.save(root / "data" / "latents" / f"{split}.npy", rng.normal(size=(rows, 6, 32)).astype(np.float32))
    res = run_cli("--mode", "advmix")
    assert res.exit_code == 1 and "expected shape (40, 6, 32)" in res.output
    codes = rng.normal(size=(40, 6, 32)).astype(np.float32)
    codes[7, 2, 5] = np.nan  # one NaN element is enough to make every weight NaN
    np.save(root / "data" / "latents" / "train.npy", codes)
    res = run_cli("--mode", "advmix")
    assert res.exit_code == 1 and "train.npy: 1 row(s) hold NaN or Inf (the first: row 7)" in res.output
    assert not (root / "models" / "classifier-advmix-s0.pt").exists()
    codes[7, 2, 5] = 0.0
    np.save(root / "data" / "latents" / "train.npy", codes)
    res = run_cli("--mode", "advmix")
    assert res.exit_code == 0, res.output
    check_outputs(root, "advmix")
    assert load_classifier(root / "models" / "classifier-advmix-s0.pt")[1]["layers"] == [2, 3, 4, 5]

    from advmix.cli import app

    res = CliRunner().invoke(app, ["evaluate", "--mode", "advmix", *CLI_SETS, "-S", "evaluate.robust_images=12",
                                   "-S", "evaluate.partners_k=2", "-S", "evaluate.steps=1",
                                   "-S", "evaluate.val_robust_images=256"])
    assert res.exit_code == 0, res.output
    result = json.loads((root / "metrics" / "eval" / "advmix-s0.json").read_text())["eval_advmix_s0"]
    assert result["mode"] == "advmix" and result["uses_group_labels"] is False
    assert set(result["splits"]) == {"val", "test_iid", "test_balanced", "test_flipped"}
    assert result["robust_images"] == 12
    assert 0 <= result["semantic_robust_acc"] <= result["robust_clean_acc"]
    pgd = result["pgd_robust_acc"]
    assert set(pgd) == {"2/255", "8/255"} and pgd["8/255"] <= pgd["2/255"] + 1 / 12 and 0 <= result["mix_change_error"] <= 1
    assert result["val_robust_images"] == 8 and 0 <= result["val_semantic_robust_acc"] <= 1  # all of val (8 < 256)
    by_group = (root / "results" / "eval" / "advmix-s0" / "by_group.csv").read_text().splitlines()
    assert by_group[0] == "split,group,n,acc,selection_rate,tpr"
    assert sum(line.startswith("test_balanced,") for line in by_group) == 4
    missing = CliRunner().invoke(app, ["evaluate", "--mode", "linf", *CLI_SETS])
    assert missing.exit_code == 1 and "classifier-linf-s0.pt: no such classifier" in missing.output

    # the worst mixes against nominal (the first of train.seeds), then the report, which only reads
    assert run_cli("--mode", "nominal").exit_code == 0
    small_eval = ["-S", "evaluate.robust_images=12", "-S", "evaluate.partners_k=2", "-S", "evaluate.steps=1",
                  "-S", "evaluate.worst_mixes=4"]
    assert CliRunner().invoke(app, ["evaluate", "--mode", "nominal", *CLI_SETS, *small_eval,
                                    "-S", "evaluate.val_robust_images=0"]).exit_code == 0
    nominal = json.loads((root / "metrics" / "eval" / "nominal-s0.json").read_text())["eval_nominal_s0"]
    assert "val_semantic_robust_acc" not in nominal and nominal["semantic_robust_acc"] is not None  # 0 skips val only
    res = CliRunner().invoke(app, ["report", *CLI_SETS, *small_eval])
    assert res.exit_code == 1 and "no eval file for the planned run(s)" in res.output  # params plan 6 modes x 5 seeds
    (root / "params.yaml").write_text(json.dumps({"data": {"sizes": TINY_SIZES},
                                                  "train": {"modes": ["nominal", "advmix"], "seeds": [0]}}) + "\n")
    res = CliRunner().invoke(app, ["report", *CLI_SETS, *small_eval])
    assert res.exit_code == 1 and "dfr_advmix-s0, dfr_nominal-s0" in res.output  # dfr.bases plans two refits
    for base in ("nominal", "advmix"):  # DFR: the last layer refit on group-balanced val, measured clean
        res = CliRunner().invoke(app, ["dfr", "--base", base, *CLI_SETS, "-S", "dfr.subsets=2"])
        assert res.exit_code == 0, (res.output, res.exception)
        assert f"classifier-dfr_{base}-s0.pt: label_free C " in res.output
    refit = json.loads((root / "metrics" / "eval" / "dfr_advmix-s0.json").read_text())["eval_dfr_advmix_s0"]
    assert refit["group_labels_read"] == "val" and "semantic_robust_acc" not in refit  # no attack
    assert set(refit["selection"]) == {"label_free", "val_worst_group"}
    res = CliRunner().invoke(app, ["worst-mixes", *CLI_SETS, *small_eval])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "the 4 worst mixes against nominal" in res.output
    with np.load(root / "results" / "report" / "worst_mixes.npz") as npz:
        assert npz["mixed"].shape == (4, 16, 16, 3) and set(npz.files) == {"clean", "mixed", "label", "pred_nominal"}
    res = CliRunner().invoke(app, ["report", *CLI_SETS])
    assert res.exit_code == 0, (res.output, res.exception)
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    assert set(summary["modes"]) == {"nominal", "advmix", "dfr_nominal", "dfr_advmix"}
    assert summary["selection"]["modes"]["dfr_nominal"]["group_labels_in_training"] == "val"
    assert "data:image/png;base64," in (root / "reports" / "summary.html").read_text()
    doc = root / "results.md"  # the generated section of docs/results.md, DFR refits included
    doc.write_text("head\n<!-- generated: advmix report --docs -->\nold\n<!-- /generated -->\ntail\n")
    res = CliRunner().invoke(app, ["report", *CLI_SETS, "--docs", str(doc)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "| dfr_advmix |" in doc.read_text() and "old" not in doc.read_text()

    # bench/seed_spread.py: the stages' train and evaluate calls, modes x seeds in one process, nothing written
    import importlib.util

    spec = importlib.util.spec_from_file_location("seed_spread", Path(__file__).parents[1] / "bench" / "seed_spread.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = bench.main(["--modes", "nominal", "advmix", "--seeds", "0", "1", "--device", "cpu", *CLI_SETS, *small_eval])
    assert [(r["mode"], r["seed"]) for r in out["rows"]] == [("nominal", 0), ("advmix", 0), ("nominal", 1),
                                                              ("advmix", 1)]
    nominal_errors = [r["error"] for r in out["rows"] if r["mode"] == "nominal"]
    assert out["summary"]["nominal"]["error"] == pytest.approx(sum(nominal_errors) / 2)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    with pytest.raises(SystemExit, match="val_robust_images=256"):  # --val-only without a val figure
        bench.main(["--val-only", "--modes", "advmix", *CLI_SETS, "-S", "evaluate.val_robust_images=0"])


def test_bench_smoke():
    root = Path(__file__).parents[1]
    res = subprocess.run([sys.executable, str(root / "bench" / "train_cost.py"), "--resolution", "16", "--batch", "8",
                          "--n-batches", "2", "--width", "8", "--k", "2", "--steps", "1",
                          "--modes", "nominal", "randmix", "advmix", "linf"],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    for mode in ("nominal", "randmix", "advmix", "linf"):
        assert mode in res.stdout
    assert "x nominal" in res.stdout and "x floor" in res.stdout
    advmix = next(line.split() for line in res.stdout.splitlines() if line.startswith("advmix "))
    assert float(advmix[-1]) > 0  # measured / floor


def test_jtt_upsamples_exactly_the_errors_of_the_identification_model(tiny_run):
    """A hand-made identification model that errs on known rows: those rows, and only those, are upsampled."""
    from advmix.classifier_training import jtt_epoch_rows, train_errors

    _, train, _, _, _ = tiny_run

    class RedSaysOne(torch.nn.Module):  # predicts class 1 where the mean red value is above the split's median
        def __init__(self, cut: float):
            super().__init__()
            self.cut = cut

        def forward(self, x):
            score = x[:, 0].mean((1, 2)) - self.cut
            return torch.stack([-score, score], 1)

    red = (train.images[..., 0].astype(np.float64) / 127.5 - 1).mean((1, 2))
    labels = train.manifest["label"].to_numpy()
    wrong = train_errors(RedSaysOne(float(np.median(red))), train, 7, torch.device("cpu"))
    assert (wrong == ((red > np.median(red)).astype(int) != labels)).all() and 0 < wrong.sum() < len(train)
    rows = jtt_epoch_rows(wrong, 5)
    counts = np.bincount(rows, minlength=len(train))
    assert (counts[wrong] == 5).all() and (counts[~wrong] == 1).all()


def test_cli_train_jtt(project):
    root, _ = project
    res = run_cli("--mode", "jtt", "-S", "train.jtt.upweight=3")
    assert res.exit_code == 0, res.output
    check_outputs(root, "jtt")
    assert not list((root / ".advmix").rglob("*identification*"))  # both training states are removed when done
