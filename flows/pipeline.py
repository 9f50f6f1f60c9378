"""The advmix pipeline as a Prefect flow: one task per DVC stage, run one after another.

`dvc repro` stays the engine of record (caching, run-cache, dvc.lock, lineage). The flow adds
what DVC lacks: retries on transient failures, the stage logs and a metrics table in the Prefect
UI, and schedules (flows/deploy.py, prefect.yaml).

- Stages come from dvc.yaml through DVC's Python API, dependencies first, matrix stages
  expanded (`train@nominal-0`; advmix/project.py). Each runs as the command `dvc repro --single-item
  <stage>`, its output streamed line by line into the task's log: a stage that has not changed is
  skipped (`force=True` runs it anyway). No private DVC function is called or patched.
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
import os
import sys
from collections import deque
from contextlib import chdir
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from advmix.project import RAN, check_project, is_validation, list_stages, select_stages

STAGE_RETRIES = 2
STAGE_RETRY_DELAYS = [30, 120]  # seconds before the first and the second retry
METRICS_ARTIFACT = "advmix-metrics"
REPORT_ARTIFACT = "advmix-report"
VALIDATION_ARTIFACT = "advmix-validation"
LOCKED = "Unable to acquire lock"  # what `dvc repro` says when another DVC process holds the project
TAIL_LINES = 40  # of a failed stage's output, kept for its error

# OSErrors that a retry cannot fix; every other OSError (timeouts, busy files, NFS hiccups) is transient.
_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class DataValidationError(RuntimeError):
    """The validate stage failed: the data broke an expectation (or could not be checked)."""


class StageFailed(RuntimeError):
    """`dvc repro` of one stage exited non-zero; the message names the stage and its cause in one line."""

    def __init__(self, stage: str, code: int, tail: list[str]) -> None:
        self.stage, self.code, self.tail = stage, code, tail
        self.transient = any(LOCKED in line for line in tail)
        super().__init__(f"stage {stage} failed: {cause(tail) or f'exit status {code}'}")


def cause(lines: list[str]) -> str | None:
    """The line that says why: advmix's one `error:` line, else DVC's last `ERROR:` line."""
    for prefix in ("error:", "ERROR:"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1].removeprefix(prefix).strip()
    return None


# ---------------------------------------------------------------- retries


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may fix: a DVC lock held by another process, an I/O hiccup. A stage command that
    exits non-zero for another reason is deterministic and is not retried."""
    if isinstance(exc, StageFailed):
        return exc.transient
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def _retry_if_transient(task_, task_run, state) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - no result to inspect: do not retry
            return False
    return isinstance(exc, BaseException) and is_transient(exc)


def _stage_env() -> dict[str, str]:
    """The environment of `dvc repro` and its stage commands: `dvc` and `advmix` from this interpreter's
    environment first on PATH (a worker started as `.venv/bin/prefect worker start` may not have the venv on it),
    unbuffered lines, and wide enough that rich does not wrap the commands' messages."""
    path = os.environ.get("PATH", "")
    bindir = str(Path(sys.executable).parent)
    if bindir not in path.split(os.pathsep):
        path = os.pathsep.join([bindir, path]) if path else bindir
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", "160")}


# ---------------------------------------------------------------- stages and params


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
    """`dvc repro --single-item [--force] <stage>` as a command, every line it prints sent to the task's log;
    returns the stages that ran ([] when unchanged and skipped), or raises StageFailed naming the cause."""
    import subprocess

    logger = get_run_logger()
    cmd = ["dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    ran, tail = [], deque(maxlen=TAIL_LINES)
    with subprocess.Popen(cmd, cwd=root, env=_stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line.strip():
                logger.info(line)
                tail.append(line.strip())
            if match := RAN.match(line.strip()):
                ran.append(match["stage"])
    if proc.returncode:
        raise StageFailed(stage, proc.returncode, list(tail))
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
    return str(exc) if isinstance(exc, StageFailed) else f"{type(exc).__name__}: {exc}"


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
        if is_validation(stage):
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


# ---------------------------------------------------------------- `advmix run`


def run_pipeline(root: Path, stages: list[str] | None, force: bool, overrides: dict[str, Any],
                 echo=print) -> dict[str, Any]:
    """`advmix run`: the flow once, against PREFECT_API_URL or a local server this process starts and owns (it
    stops with the run, and dies with this process even on a kill -9); its metrics, or PipelineFailed saying which
    stage failed and why. Prefect's console log shows no traceback (the full log stays in the Prefect UI)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from advmix.project import PipelineFailed

    with local_server(echo) as api, temporary_settings({PREFECT_API_URL: api} if api else {}), quiet_console():
        state = advmix_pipeline(stages=stages or None, force=force, params_overrides=overrides or None,
                                root=str(root), return_state=True)
    if not state.is_completed():
        raise PipelineFailed(f"pipeline {state.name.lower()}: {failure_line(state)}")
    return state.result()


def failure_line(state) -> str:
    """The failed run's cause in one line: the StageFailed, DataValidationError or ParamsError that ended it."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 - the run's own exception, whatever it is
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return state.message or state.name


class local_server:
    """`prefect server start` on a free local port when PREFECT_API_URL is unset; yields its API URL (None when a
    server is configured). The server gets PR_SET_PDEATHSIG on Linux, so it stops when this process dies."""

    def __init__(self, echo=print) -> None:
        self.echo, self.proc = echo, None

    def __enter__(self) -> str | None:
        import socket
        import subprocess
        import time

        import httpx
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        api = f"http://127.0.0.1:{port}/api"
        prefect = Path(sys.executable).parent / "prefect"
        server = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--host", "127.0.0.1",
                  "--port", str(port)]
        self.proc = subprocess.Popen([sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *server],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.echo(f"Prefect server for this run: {api} (pid {self.proc.pid}; it stops with the run)")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    return api
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"the Prefect server on port {port} did not start within 120 s")

    def __exit__(self, *exc) -> None:
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# Run as `python -c DIE_WITH_PARENT PARENT_PID CMD...` in a fresh interpreter (no thread, unlike a preexec_fn): ask
# Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG, kept across exec; a no-op elsewhere), leave at once if
# the parent is already gone, then become CMD.
DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execvp(sys.argv[2], sys.argv[2:])
"""


class quiet_console:
    """While inside, Prefect's console handlers print each record without its traceback."""

    def __enter__(self) -> None:
        import logging

        self.saved = []
        loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                                          if n.startswith("prefect"))]
        handlers = {h for lg in loggers for h in lg.handlers if type(h).__name__ == "PrefectConsoleHandler"}
        for handler in handlers:
            self.saved.append((handler, handler.formatter))
            handler.setFormatter(_NoTraceback(handler.formatter))

    def __exit__(self, *exc) -> None:
        for handler, formatter in self.saved:
            handler.setFormatter(formatter)


class _NoTraceback:
    """A formatter that formats a record as `inner` would, but without its exception or stack."""

    def __init__(self, inner) -> None:
        import logging

        self.inner = inner or logging.Formatter()

    def format(self, record) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
