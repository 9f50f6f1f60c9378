"""dvc.yaml declares what each stage reads, key by key: a params change reruns the stages that read it and no other.

Every stage's outputs are stood in by placeholder files and recorded with `dvc commit`, so that `dvc status` compares
the params and code each stage declares without running any of them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline import dvc, make_project

from advmix.params import load_params


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A project whose every stage looks up to date: placeholder outputs, recorded in dvc.lock."""
    tmp = tmp_path_factory.mktemp("wiring")
    # every mode and DFR base of the default, two seeds instead of five: `dvc status` takes time per stage, and two
    # seeds still tell "this seed's stages" from "every seed's"
    env = make_project(tmp, {"train": {"seeds": [0, 1]}})
    listed = subprocess.run(["dvc", "stage", "list", "--all"], cwd=tmp, env=env, capture_output=True, text=True,
                            check=True).stdout
    assert "train@nominal-0" in listed
    code = ("import json; from dvc.repo import Repo; r = Repo('.'); "
            "print(json.dumps([str(o.fs_path) for s in r.index.stages for o in s.outs]))")
    outs = json.loads(subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                                     check=True).stdout)
    for out in map(Path, outs):
        if out.suffix:  # a file
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("placeholder\n")
        else:  # a folder
            out.mkdir(parents=True, exist_ok=True)
            (out / "placeholder").write_text("placeholder\n")
    res = dvc(tmp, env, "commit", "--force", "-q")
    assert res.returncode == 0, res.stderr
    assert json.loads(dvc(tmp, env, "status", "--json").stdout) == {}
    return tmp, env


def changed_after(committed, **overrides) -> set[str]:
    """The stages `dvc status` reports after setting dotted keys in params.yaml (restored afterwards)."""
    tmp, env = committed
    path = tmp / "params.yaml"
    before = path.read_text()
    raw = yaml.safe_load(before)
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        load_params(path)  # the edit must stay valid params
        res = dvc(tmp, env, "status", "--json")
        assert res.returncode == 0, res.stderr
        return set(json.loads(res.stdout))
    finally:
        path.write_text(before)


@pytest.mark.slow
def test_a_mode_knob_reruns_that_mode_only(committed):
    changed = changed_after(committed, **{"train.advmix.partners_k": 8})
    seeds = load_params(committed[0] / "params.yaml").train.seeds
    assert changed == {f"train@advmix-{s}" for s in seeds}
    assert changed_after(committed, **{"train.augmix.severity": 2}) == {f"train@augmix-{s}" for s in seeds}


@pytest.mark.slow
def test_a_new_seed_adds_only_its_own_stages(committed):
    p = load_params(committed[0] / "params.yaml")
    new = max(p.train.seeds) + 1
    changed = changed_after(committed, **{"train.seeds": [*p.train.seeds, new]})
    assert changed == {f"{stage}@{m}-{new}" for stage in ("train", "evaluate") for m in p.train.modes} | {
        f"dfr@{b}-{new}" for b in p.dfr.bases} | {"report"}


@pytest.mark.slow
def test_the_report_figure_knob_reruns_the_report_only(committed):
    assert changed_after(committed, **{"evaluate.worst_mixes": 8}) == {"report"}
    p = load_params(committed[0] / "params.yaml")
    assert changed_after(committed, **{"evaluate.linf_steps": 3}) == {
        f"evaluate@{m}-{s}" for m in p.train.modes for s in p.train.seeds}


@pytest.mark.slow
def test_run_control_knobs_rerun_nothing(committed):
    """Where a run executes and how often it saves its state change no result, so no stage declares them."""
    knobs = {"gan.device": "cpu", "gan.checkpoint_minutes": 9.0, "train.device": "cpu",
             "train.checkpoint_minutes": 9.0}
    assert changed_after(committed, **knobs) == set()  # all four at once: none of them reruns anything
    assert changed_after(committed, **{"gan.iterations": 7}) >= {"train-gan"}  # a real GAN knob still does
