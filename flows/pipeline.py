"""The advmix pipeline as a Prefect flow: one task per DVC stage, run one after another.

`dvc repro` stays the engine of record (caching, run-cache, dvc.lock, lineage). The flow adds
what DVC lacks: retries on transient failures, the stage logs and a metrics table in the Prefect
UI, and schedules (flows/deploy.py, prefect.yaml).

- Stages come from dvc.yaml through DVC's Python API, dependencies first, foreach stages
  expanded (`train@nominal`). Each runs as `dvc repro --single-item <stage>`: a stage that has
  not changed is skipped (`force=True` runs it anyway).
- Stages run **sequentially** on purpose: DVC's repo lock forbids two `reproduce` calls at once
  in one workspace. Parallel sweeps belong to `dvc exp run --queue`, whose workspaces are isolated.
- A failed data validation fails the flow at once, with no retry, logs the validation summary and
  runs nothing after it. Other stages are retried on transient errors (DVC lock, I/O).
- `params_overrides` behave like `dvc exp run -S`: they are validated against the params schema,
  written into params.yaml (comments kept) and **left applied**, so the workspace afterwards shows
  exactly what ran (`git diff params.yaml`, `dvc params diff`); `git checkout params.yaml` undoes them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.project import check_project

VALIDATION_STAGES = frozenset({"validate"})  # never retried; a failure stops the flow
STAGE_RETRIES = 2
STAGE_RETRY_DELAYS = [30, 120]  # seconds before the first and the second retry
METRICS_ARTIFACT = "advmix-metrics"
REPORT_ARTIFACT = "advmix-report"
VALIDATION_ARTIFACT = "advmix-validation"

# OSErrors that a retry cannot fix; every other OSError (timeouts, busy files, NFS hiccups) is transient.
_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class DataValidationError(RuntimeError):
    """The validate stage failed: the data broke an expectation (or could not be checked)."""


# ---------------------------------------------------------------- retries


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may fix: a DVC lock held by another process, an I/O hiccup.

    A stage command that exits non-zero is deterministic and is not retried.
    """
    from dvc.lock import LockError
    from dvc.stage.exceptions import StageCmdFailedError

    chain = list(_chain(exc))
    if any(isinstance(e, StageCmdFailedError) for e in chain):
        return False
    return any(isinstance(e, LockError) or (isinstance(e, OSError) and not isinstance(e, _PERMANENT_OS_ERRORS))
               for e in chain)


def _retry_if_transient(task_, task_run, state) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - no result to inspect: do not retry
            return False
    return isinstance(exc, BaseException) and is_transient(exc)


# ---------------------------------------------------------------- DVC output into the Prefect log


_DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")


class _Forward(logging.Handler):
    """Re-emit records of the `dvc` logger ("Running stage ...", "didn't change, skipping") on `target`."""

    def __init__(self, target: logging.Logger | logging.LoggerAdapter) -> None:
        super().__init__(logging.INFO)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            self.handleError(record)
            return
        if message.strip():
            self.target.log(record.levelno, message)


def _run_logged(target, executable, cmd, **kwargs) -> None:
    """Stand-in for `dvc.stage.run._run`: the same command, its stdout and stderr sent line by line to `target`.

    DVC itself lets the command write straight to the process's file descriptors, which Prefect
    never sees. SIGINT is ignored while the command runs, as DVC does, so Ctrl-C reaches the command.
    """
    from dvc.stage.exceptions import StageCmdFailedError
    from dvc.stage.run import _make_cmd

    kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    old_handler = None
    with subprocess.Popen(_make_cmd(executable, cmd), **kwargs) as proc:
        try:
            if threading.current_thread() is threading.main_thread():
                old_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
            for line in proc.stdout:
                if line.strip():
                    target.info(line.rstrip())
            proc.wait()
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
    if proc.returncode != 0:
        raise StageCmdFailedError(cmd, proc.returncode)


@contextmanager
def dvc_output_to(target) -> Iterator[None]:
    """While inside, DVC's messages and every stage command's output go to `target` (a logger), and only there.

    DVC's console handlers (installed by `import dvc`) are swapped out meanwhile, so nothing is printed twice.
    Patches the private `dvc.stage.run._run` (dvc 3.67); if a later DVC drops it, the command output goes
    to the process's stdout/stderr as with `dvc repro`, and DVC's own messages are still logged.
    """
    import dvc.stage.run as dvc_run

    handler = _Forward(target)
    saved = []
    for name in _DVC_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.handlers[:], lg.level, lg.propagate))
        lg.handlers = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False
    original = getattr(dvc_run, "_run", None)
    patch = original is not None and hasattr(dvc_run, "_make_cmd")
    if patch:
        dvc_run._run = lambda executable, cmd, **kw: _run_logged(target, executable, cmd, **kw)
    try:
        yield
    finally:
        if patch:
            dvc_run._run = original
        for lg, handlers, level, propagate in saved:
            lg.handlers = handlers
            lg.setLevel(level)
            lg.propagate = propagate


def _stage_env() -> dict[str, str]:
    """Environment additions for stage commands: `advmix` from this interpreter's environment, unbuffered lines.

    A Prefect worker started as `.venv/bin/prefect worker start` may not have the venv on PATH.
    """
    path = os.environ.get("PATH", "")
    bindir = str(Path(sys.executable).parent)
    if bindir not in path.split(os.pathsep):
        path = os.pathsep.join([bindir, path]) if path else bindir
    # Wide enough that rich does not wrap the commands' messages in the log.
    return {"PATH": path, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", "160")}


# ---------------------------------------------------------------- stages and params


def list_stages(root: str | Path = ".") -> list[str]:
    """Every stage of the project, dependencies first, foreach stages expanded (`train@nominal`).

    Among stages whose dependencies are done, a validation stage goes first (it gates everything that
    does not feed it), then dvc.yaml order.
    """
    import networkx as nx
    from dvc.repo import Repo

    with chdir(root), Repo(str(root)) as repo:  # DVC names stages relative to the working directory
        stages = list(repo.index.stages)
        rank = {stage: (not _is_validation(stage.addressing), i) for i, stage in enumerate(stages)}
        # DVC's graph points from a stage to the stages it depends on; reversed, a topological sort runs deps first.
        ordered = nx.lexicographical_topological_sort(repo.index.graph.reverse(copy=True), key=rank.__getitem__)
        return [stage.addressing for stage in ordered]


def select_stages(available: list[str], wanted: list[str] | None) -> list[str]:
    """The stages named in `wanted` (a foreach group name such as `train` means all `train@*`), in DAG order."""
    if not wanted:
        return list(available)
    chosen: set[str] = set()
    for name in wanted:
        matches = [s for s in available if s == name or s.split("@", 1)[0] == name]
        if not matches:
            raise ValueError(f"unknown stage {name!r}; dvc.yaml has: {', '.join(available)}")
        chosen.update(matches)
    return [s for s in available if s in chosen]


def _is_validation(stage: str) -> bool:
    return stage.split("@", 1)[0] in VALIDATION_STAGES


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


@task(name="apply-params", cache_policy=NO_CACHE)
def apply_params(root: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate dotted-key overrides and write them into params.yaml (like `dvc exp run -S`); they stay applied."""
    from dvc.utils.serialize import modify_yaml

    from advmix import paths
    from advmix.params import load_params, set_dotted

    path = Path(root) / paths.PARAMS
    resolved = load_params(path, overrides).to_dict()  # ParamsError names the bad key before anything is written
    applied = {key: _get_dotted(resolved, key) for key in overrides}  # the validated, normalised values
    with modify_yaml(path) as doc:
        for key, value in applied.items():
            set_dotted(doc, key, value)
    get_run_logger().info("params.yaml: %s (left applied)", ", ".join(f"{k}={v!r}" for k, v in applied.items()))
    return applied


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, retries=STAGE_RETRIES,
      retry_delay_seconds=STAGE_RETRY_DELAYS, retry_condition_fn=_retry_if_transient)
def run_stage(stage: str, root: str = ".", force: bool = False) -> list[str]:
    """`dvc repro --single-item [--force] <stage>`; returns the stages that ran ([] when unchanged and skipped)."""
    from dvc.repo import Repo

    logger = get_run_logger()
    with chdir(root), dvc_output_to(logger), Repo(root) as repo:  # DVC resolves targets from the working dir
        ran = [s.addressing for s in repo.reproduce(stage, single_item=True, force=force, run_env=_stage_env())]
    logger.info("stage %s: %s", stage, "ran" if ran else "unchanged, skipped")
    return ran


# The data gate: a failed validation is a fact about the data, so it is never retried.
validate_stage = run_stage.with_options(name="dvc-validate", retries=0, retry_condition_fn=None)


# ---------------------------------------------------------------- metrics and reports


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) if value else "—"
    return "—" if value is None else str(value)


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, f"{name}/"))
        else:
            items.append((name, value))
    return items


def metrics_markdown(metrics: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """The artifact, drawn by the report's renderer: the report's headline and short table when
    metrics/summary.json exists, else every metric as key/value (a flow that stopped before the report)."""
    from advmix.report.page import headline_section
    from advmix.report.render import Heading, Para, Table, markdown

    if summary is not None:
        return markdown([Heading(1, "advmix: results"), *headline_section(summary)])
    if not metrics:
        return markdown([Heading(1, "advmix metrics"), Para("No metrics files yet.")])
    return markdown([Heading(1, "advmix metrics"),
                     Table(["metric", "value"], [[k, _fmt(v)] for k, v in _flatten(metrics)])])


def read_metrics(root: str | Path) -> dict[str, Any]:
    """All metrics files declared in dvc.yaml, merged into one dict as `dvc.api.metrics_show` does.

    Files not written yet (stages that have not run) are left out; `dvc.api.metrics_show` would raise.
    A key found in several files is prefixed with its file name.
    """
    from dvc.repo import Repo

    try:
        with chdir(root), Repo(str(root)) as repo:
            shown = repo.metrics.show()
    except Exception as exc:  # noqa: BLE001 - unreadable metrics must not hide the run's result
        get_run_logger().warning("could not read metrics: %s", exc)
        return {}
    files = {name: entry["data"] for rev in shown.values() for name, entry in (rev.get("data") or {}).items()
             if isinstance(entry.get("data"), dict)}
    counts: dict[str, int] = {}
    for data in files.values():
        for key in data:
            counts[key] = counts.get(key, 0) + 1
    return {(key if counts[key] == 1 else f"{name}:{key}"): value
            for name, data in files.items() for key, value in data.items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def publish_results(root: Path, metrics: dict[str, Any]) -> None:
    """The metrics table as a markdown artifact and a file:// link to the HTML report."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    from advmix import paths

    summary = _read_json(root / paths.SUMMARY_METRICS)
    create_markdown_artifact(metrics_markdown(metrics, summary), key=METRICS_ARTIFACT,
                             description="advmix pipeline metrics (dvc metrics show)")
    for report in (root / paths.SUMMARY_HTML, paths.validation_page(root)):
        if report.is_file():
            create_link_artifact(report.resolve().as_uri(), link_text=str(report.relative_to(root)),
                                 key=REPORT_ARTIFACT, description="advmix HTML report")
            break


def _root_cause(exc: BaseException) -> str:
    cause = list(_chain(exc))[-1]
    return f"{type(cause).__name__}: {cause}"


def validation_summary(root: Path, error: BaseException | None = None) -> tuple[str, str]:
    """(one-line summary, markdown) of a failed validate stage, from metrics/validation.json."""
    from advmix import paths

    report = paths.validation_page(root)
    result = _read_json(paths.validation_metrics(root))
    if result is None or result.get("success") is not False:  # no fresh result: the stage broke before checking
        line = "the validate stage failed before checking the data" + (f": {_root_cause(error)}" if error else "")
        return line, f"# Data validation failed\n\n{line}\n\nNothing after the validate stage ran.\n"
    where = f"report: {report.resolve().as_uri()}" if report.is_file() else "no HTML report was written"
    failed = [str(name) for name in result.get("failed") or []]
    evaluated = result.get("evaluated", "?")
    line = f"data validation failed: {len(failed)} of {evaluated} expectations: {', '.join(failed)}; {where}"
    md = "\n".join(["# Data validation failed", "",
                    f"{len(failed)} of {evaluated} expectations failed; nothing after the validate stage ran.", "",
                    *(f"- `{name}`" for name in failed), "", where, ""])
    return line, md


def _report_validation_failure(root: Path, error: BaseException) -> str:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    from advmix import paths

    line, md = validation_summary(root, error)
    get_run_logger().error(line)
    create_markdown_artifact(md, key=VALIDATION_ARTIFACT, description="advmix data validation failure")
    report = paths.validation_page(root)
    if report.is_file():
        create_link_artifact(report.resolve().as_uri(), link_text="validation report", key=REPORT_ARTIFACT,
                             description="Great Expectations validation report")
    return line


# ---------------------------------------------------------------- the flow


@flow(name="advmix-pipeline", log_prints=True)
def advmix_pipeline(stages: list[str] | None = None, force: bool = False,
                    params_overrides: dict[str, Any] | None = None, root: str = ".") -> dict[str, Any]:
    """Run the DVC stages of the advmix pipeline in order, one Prefect task each; return the metrics.

    Args:
        stages: stage names to run (default: all). A foreach group name (`train`) means all its members.
            Upstream stages are not added: like `dvc repro --single-item`.
        force: run the stages even when DVC sees no change.
        params_overrides: dotted keys, e.g. {"data.rho": 0.9}; validated, then written into params.yaml and
            left applied, like `dvc exp run -S`.
        root: the project folder (holding dvc.yaml and params.yaml).
    """
    logger = get_run_logger()
    root_path = Path(root).resolve()
    check_project(root_path)
    if params_overrides:
        apply_params(str(root_path), params_overrides)
    plan = select_stages(list_stages(root_path), stages)
    logger.info("stages, in order: %s", ", ".join(plan))
    ran: list[str] = []
    for stage in plan:
        if _is_validation(stage):
            try:
                ran += validate_stage(stage, str(root_path), force)
            except Exception as exc:
                raise DataValidationError(_report_validation_failure(root_path, exc)) from exc
        else:
            ran += run_stage(stage, str(root_path), force)
    logger.info("ran: %s; unchanged: %s", ", ".join(ran) or "none",
                ", ".join(s for s in plan if s not in ran) or "none")
    metrics = read_metrics(root_path)
    publish_results(root_path, metrics)
    return metrics
