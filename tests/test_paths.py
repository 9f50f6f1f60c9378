"""advmix/paths.py spells every path that dvc.yaml declares, and dvc.yaml declares every path that paths.py spells."""

import os
from pathlib import Path

import pytest

from advmix import paths
from advmix.modes import dfr_run
from advmix.params import SPLITS, load_params

ROOT = Path(__file__).parents[1]
# scratch states; the sweep reads experiments; the params profiles and DVC's own lock are no stage's
NOT_IN_DVC = {paths.SCRATCH, paths.SWEEP_FIGURE, paths.SWEEP_JSON, paths.PROFILES, paths.DVC_YAML, paths.DVC_LOCK}


def spelled() -> set[Path]:
    """Every path paths.py gives for the committed params: its constants, and its functions over the plan."""
    p = load_params(ROOT / "params.yaml")
    found = {v for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path)}
    found |= {paths.dataset_dir(p.data.name), paths.validation_dir(), paths.validation_metrics()}
    found |= {paths.latents_file(split) for split in SPLITS}
    for mode in p.train.modes:
        for seed in p.train.seeds:
            found |= {f(mode, seed) for f in (paths.classifier, paths.train_live_dir, paths.train_metrics,
                                              paths.eval_dir, paths.eval_by_group, paths.eval_metrics)}
    for run in (dfr_run(base) for base in p.dfr.bases):  # a DFR refit: no dvclive folder
        for seed in p.train.seeds:
            found |= {f(run, seed) for f in (paths.classifier, paths.train_metrics, paths.eval_dir,
                                             paths.eval_by_group, paths.eval_metrics)}
    return found


@pytest.fixture(scope="module")
def declared() -> set[Path]:
    """Every out and every non-code dep of every stage in dvc.yaml, resolved with params.yaml."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        files = {Path(os.path.relpath(o.fs_path, ROOT)) for s in repo.index.stages for o in [*s.outs, *s.deps]}
    return {f for f in files if f.parts[0] != "advmix"}


def test_paths_py_spells_every_declared_path(declared):
    names = spelled()
    folders = {f.parent for f in names}  # a declared folder such as results/report holds a spelled file
    assert sorted(map(str, declared - names - folders)) == []


def test_dvc_yaml_declares_every_spelled_path(declared):
    def covered(path: Path) -> bool:  # declared, inside a declared folder, or a folder of declared paths (data/)
        return any(path == d or d in path.parents or path in d.parents for d in declared)

    missing = [str(f) for f in spelled() - NOT_IN_DVC if not covered(f) and paths.SCRATCH not in f.parents]
    assert sorted(missing) == []


def test_writes_names_every_out_of_every_stage():
    """advmix/writes.py's table, which `advmix <stage>` checks before any work, holds each stage's declared outs (and
    may add the scratch states)."""
    from dvc.repo import Repo

    from advmix.writes import stage_outputs

    p = load_params(ROOT / "params.yaml")
    with Repo(str(ROOT)) as repo:
        stages = [(s.addressing, {Path(os.path.relpath(o.fs_path, ROOT)) for o in s.outs}) for s in repo.index.stages]
    for address, outs in stages:
        group, _, item = address.partition("@")
        mode, _, seed = item.rpartition("-")
        listed = set(stage_outputs(group, p, mode, int(seed)) if item else stage_outputs(group, p))
        assert outs <= listed, (address, sorted(map(str, outs - listed)))
        assert all(paths.SCRATCH in f.parents for f in listed - outs), (address, sorted(map(str, listed - outs)))
