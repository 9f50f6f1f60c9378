"""dvc.yaml declares what each stage reads, key by key: a params change reruns the stages that read it and no other.

Every stage's outputs are stood in by placeholder files and recorded by DVC's commit, so that DVC's status compares
the params and code each stage declares without running any of them."""

import contextlib
from pathlib import Path

import pytest
import yaml
from test_pipeline import make_project

from advmix.params import load_params


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A project whose every stage looks up to date: placeholder outputs, recorded in dvc.lock."""
    tmp = tmp_path_factory.mktemp("wiring")
    # every mode and DFR base of the default, two seeds instead of five: `dvc status` takes time per stage, and two
    # seeds still tell "this seed's stages" from "every seed's"
    make_project(tmp, {"train": {"seeds": [0, 1]}})
    with open_repo(tmp) as repo:
        assert "train@nominal-0" in {stage.name for stage in repo.index.stages}
        for out in (Path(o.fs_path) for stage in repo.index.stages for o in stage.outs):
            if out.suffix:  # a file
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text("placeholder\n")
            else:  # a folder
                out.mkdir(parents=True, exist_ok=True)
                (out / "placeholder").write_text("placeholder\n")
        repo.commit(force=True)
    assert status(tmp) == {}
    return tmp


@contextlib.contextmanager
def open_repo(root: Path):
    """DVC's Repo in this process (a `dvc` process costs seconds of imports per call), from inside the project."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        yield repo


def status(root: Path) -> dict:
    """What `dvc status --json` prints: the stages whose declared deps, params or outs changed."""
    with open_repo(root) as repo:
        return repo.status()


def changed_after(committed, **overrides) -> set[str]:
    """The stages `dvc status` reports after setting dotted keys in params.yaml (restored afterwards), besides
    check-params."""
    path = committed / "params.yaml"
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
        changed = set(status(committed))
        # check-params reads every key; its output never changes, so it reruns nothing downstream
        assert "check-params" in changed
        return changed - {"check-params"}
    finally:
        path.write_text(before)


@pytest.mark.slow
def test_a_mode_knob_reruns_that_mode_only(committed):
    changed = changed_after(committed, **{"train.advmix.partners_k": 8})
    seeds = load_params(committed / "params.yaml").train.seeds
    assert changed == {f"train@advmix-{s}" for s in seeds}
    assert changed_after(committed, **{"train.huejitter.hue": 0.4}) == {f"train@huejitter-{s}" for s in seeds}
    assert changed_after(committed, **{"train.augmix.severity": 2}) == set()  # augmix is not in the default's plan


@pytest.mark.slow
def test_a_new_seed_adds_only_its_own_stages(committed):
    p = load_params(committed / "params.yaml")
    new = max(p.train.seeds) + 1
    changed = changed_after(committed, **{"train.seeds": [*p.train.seeds, new]})
    assert changed == {f"{stage}@{m}-{new}" for stage in ("train", "evaluate") for m in p.train.modes} | {
        f"dfr@{b}-{new}" for b in p.dfr.bases} | {"report"}


@pytest.mark.slow
def test_the_report_knobs_rerun_the_report_and_its_worst_mixes_only(committed):
    assert changed_after(committed, **{"evaluate.worst_mixes": 8}) == {"worst-mixes"}
    assert changed_after(committed, **{"mixing.min_transfer": 0.8}) == {"analyze-layers", "report"}  # the bar
    p = load_params(committed / "params.yaml")
    assert changed_after(committed, **{"evaluate.linf_steps": 3}) == {
        f"evaluate@{m}-{s}" for m in p.train.modes for s in p.train.seeds}


@pytest.mark.slow
def test_run_control_knobs_rerun_nothing(committed):
    """Where a run executes and how often it saves its state change no result, so no stage declares them."""
    knobs = {"gan.device": "cpu", "gan.checkpoint_minutes": 9.0, "train.device": "cpu",
             "train.checkpoint_minutes": 9.0}
    assert changed_after(committed, **knobs) == set()  # all four at once: none of them reruns anything
    assert changed_after(committed, **{"gan.iterations": 7}) >= {"train-gan"}  # a real GAN knob still does
