"""A project folder as `advmix run`, the Prefect flow and `advmix demo` see it: checked before anything starts, its
stages in the order they run, and a run of them inside one process. Imports no Prefect, so that a refused run costs
no server start and leaves no log handler."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from contextlib import chdir
from pathlib import Path

import click
import networkx as nx
from dvc.repo import Repo

from advmix import paths
from advmix.cli import app
from advmix.stages.check_params import MissingSection, check_sections

GUARD = "check-params"  # the stage every other one is downstream of (advmix/stages/check_params.py)
VALIDATION_STAGES = frozenset({GUARD, "validate"})  # never retried; a failure stops the flow
RAN = re.compile(r"^Running stage '(?P<stage>[^']+)'")  # how `dvc repro` says it runs a stage


class ProjectError(ValueError):
    """The folder is no pipeline that DVC can run to the end, or a stage name it does not have."""

    code = 2  # the exit code of `advmix run`: a usage error


class PipelineFailed(ProjectError):
    """A run that started and did not complete (a stage failed); the message says which and why."""

    code = 1


def check_project(root: str | Path) -> None:
    """Refuse, before any stage runs, a folder on which `dvc repro` would fail midway."""
    root = Path(root)
    if not (root / paths.DVC_YAML).is_file():
        raise ProjectError(f"{root}: no dvc.yaml; run `advmix run` from the project folder")
    try:
        check_sections(root / paths.PARAMS)
    except MissingSection as exc:
        raise ProjectError(str(exc)) from None


def list_stages(root: str | Path = ".") -> list[str]:
    """Every stage of the project, dependencies first, matrix stages expanded (`train@nominal-0`).

    Among stages whose dependencies are done, a validation stage goes first (it gates everything that does not
    feed it), then dvc.yaml order."""
    with chdir(root), Repo(str(root)) as repo:  # DVC names stages relative to the working directory
        stages = list(repo.index.stages)
        rank = {stage: (not is_validation(stage.addressing), i) for i, stage in enumerate(stages)}
        # DVC's graph points from a stage to the stages it depends on; reversed, a topological sort runs deps first.
        ordered = nx.lexicographical_topological_sort(repo.index.graph.reverse(copy=True), key=rank.__getitem__)
        return [stage.addressing for stage in ordered]


def select_stages(available: list[str], wanted: list[str] | None) -> list[str]:
    """The stages named in `wanted` (a group name such as `train` means all `train@*`), in DAG order, after
    check-params, which guards every stage; ProjectError for a name dvc.yaml does not have."""
    if not wanted:
        return list(available)
    chosen: set[str] = {GUARD} & set(available)
    for name in wanted:
        matches = [s for s in available if s == name or s.split("@", 1)[0] == name]
        if not matches:
            groups = sorted({s.split("@", 1)[0] for s in available})
            raise ProjectError(f"--stage {name!r}: no such stage; dvc.yaml has {', '.join(groups)} "
                               "(a group such as `train` means all its members)")
        chosen.update(matches)
    return [s for s in available if s in chosen]


def is_validation(stage: str) -> bool:
    return stage.split("@", 1)[0] in VALIDATION_STAGES


def stage_commands(root: str | Path = ".") -> list[tuple[str, str]]:
    """(stage, command) of every stage, in the order of `list_stages`, with the commands DVC resolves from dvc.yaml
    and params.yaml."""
    with chdir(root), Repo(str(root)) as repo:
        commands = {stage.addressing: stage.cmd for stage in repo.index.stages}
    return [(name, commands[name]) for name in list_stages(root)]


def repro_in_process(root: str | Path, stages: list[str] | None = None, echo=print) -> list[str]:
    """Run `stages` (default: all) in DVC's order inside this process, then record them with `dvc commit`, so that
    `dvc status` finds them up to date and `dvc repro` reruns what changes later.

    What `dvc repro` does, without a process per stage: each pays seconds of imports (torch, Great Expectations),
    which is most of the time on a tiny project (`advmix demo`, the tests). Stops at the first stage that fails,
    with PipelineFailed naming it."""

    ran = []
    with chdir(root):
        for name, cmd in stage_commands("."):
            if stages is not None and name not in stages:
                continue
            program, *args = shlex.split(cmd)
            if program != "advmix":
                raise ProjectError(f"{paths.DVC_YAML}: stage {name} runs {program!r}, not advmix")
            echo(f"stage {name}: {cmd}")
            try:  # not standalone: click returns a clean exit's code instead of leaving the process
                code = app(args, standalone_mode=False)
            except (click.exceptions.Exit, SystemExit) as exc:
                code = getattr(exc, "exit_code", getattr(exc, "code", 1))
            if code:
                raise PipelineFailed(f"stage {name} failed (exit {code}); its error is above")
            ran.append(name)
        done = subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "-q", *ran], capture_output=True, text=True, check=False)
        if done.returncode:
            raise PipelineFailed(f"dvc commit: {(done.stderr or done.stdout).strip()}")
    return ran
