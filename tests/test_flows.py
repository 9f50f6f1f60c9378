"""The Prefect flow over the DVC stages, its deployment (flows/deploy.py, prefect.yaml) and `advmix run`."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from advmix.cli import app
from advmix.params import parse_params

ROOT = Path(__file__).parents[1]
SIZES = {"train": 40, "val": 8, "test_iid": 8, "test_balanced": 16, "test_flipped": 8, "pool": 40}
BIN = Path(sys.executable).parent  # the stage commands call `advmix` and the test calls `dvc` from here


def make_project(tmp: Path) -> Path:
    """A git + DVC repo with the code, flows, dvc.yaml and full params.yaml with tiny splits."""
    for folder in ("advmix", "flows"):
        shutil.copytree(ROOT / folder, tmp / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp / name)
    # the full resolved params: dvc.yaml templates and stage `params:` read keys from the file
    (tmp / "params.yaml").write_text(yaml.safe_dump(parse_params({"data": {"sizes": SIZES}}).to_dict(),
                                                    sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=tmp, env=env, check=True)
    return tmp


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, timeout: float, what: str, procs: list[subprocess.Popen]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[:3]} exited with {proc.returncode} while waiting for {what}"
        value = check()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (the last started first), SIGKILL what is still there after 20 s."""
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real `prefect server start` for this module, on a free local port with a temporary home and SQLite
    database, its scheduler looping every 5 s: the flows below run against it and the cron test serves a deployment
    on it (one server start instead of two; each costs seconds). Yields the env for processes that use it."""
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, port = tmp_path_factory.mktemp("prefect-server"), _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PREFECT_HOME": str(home),
           "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_UI_ENABLED": "false", "ADVMIX_THREADS": "1"}
    procs: list[subprocess.Popen] = []

    def healthy():
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with open(home / "server.log", "w") as log:
        try:
            procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                           str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            _wait_for(healthy, 120, "the server's health endpoint", procs)
            with temporary_settings({PREFECT_API_URL: api}):
                yield env
        finally:
            _stop(procs)
    assert all(proc.poll() is not None for proc in procs)


# ---------------------------------------------------------------- reading a run back from the API


def _run_id(state):
    return state.state_details.flow_run_id


def _task_runs(state) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[_run_id(state)])))
    return {run.name: run for run in runs}


def _log_text(state, expected: str, wait: float = 10.0) -> str:
    """The flow run's log as one string, polled until it contains `expected` (logs are shipped in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    deadline = time.monotonic() + wait
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[_run_id(state)])),
                                    limit=200, sort=LogSort.TIMESTAMP_ASC)
        text = "\n".join(log.message for log in logs)
        if expected in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def _artifacts(state) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[_run_id(state)])))
    return {a.key: a for a in found}


# ---------------------------------------------------------------- the flow, end to end


@pytest.fixture(scope="module")
def flow_run(server, tmp_path_factory):
    """prepare + validate of the real dvc.yaml on tiny data, through the flow; (project folder, final state)."""
    from flows.pipeline import advmix_pipeline

    root = make_project(tmp_path_factory.mktemp("flow"))
    state = advmix_pipeline(stages=["prepare", "validate"], root=str(root), return_state=True)
    return root, state


@pytest.mark.slow
def test_flow_runs_each_stage_as_a_task_and_publishes_metrics(flow_run):
    root, state = flow_run
    assert state.is_completed(), state.message
    metrics = state.result()
    assert metrics["success"] is True and metrics["evaluated"] > 0

    runs = _task_runs(state)
    assert {"check-params", "prepare", "validate"} <= set(runs), sorted(runs)  # the guard runs before any selection
    assert runs["check-params"].end_time <= runs["prepare"].start_time
    assert all(runs[s].state.is_completed() and runs[s].run_count == 1 for s in ("prepare", "validate"))
    assert runs["prepare"].start_time < runs["validate"].start_time  # one after another, in DAG order
    assert {"prepare", "validate"} <= set(yaml.safe_load((root / "dvc.lock").read_text())["stages"])

    # DVC's own messages and the stage commands' stdout/stderr are in the Prefect log
    log = _log_text(state, "validation passed")
    for line in ("Running stage 'prepare'", "> advmix prepare", "wrote data/synthfaces", "> advmix validate",
                 "validation passed"):
        assert line in log, line

    artifacts = _artifacts(state)
    table = artifacts["advmix-metrics"]
    assert table.type == "markdown" and "| metric | value |" in table.data and "| success | True |" in table.data
    report = artifacts["advmix-report"]
    assert f"{(root / 'reports' / 'validation' / 'index.html').as_uri()}" in report.data


@pytest.mark.slow
def test_failed_validation_fails_the_flow_at_once(flow_run, tmp_path):
    from flows.pipeline import advmix_pipeline

    root = tmp_path / "project"
    shutil.copytree(flow_run[0], root, symlinks=True)
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["after-validate"] = {"cmd": "python -c \"open('marker.txt', 'w').write('ran')\"",
                                        "deps": ["metrics/validation.json"], "outs": ["marker.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    # every stage of the project; the override is applied like `dvc exp run -S` and makes validation fail
    state = advmix_pipeline(params_overrides={"validate.min_pixel_std": 0.9}, root=str(root), return_state=True)
    assert state.is_failed()
    assert "data validation failed" in state.message and "image_contrast" in state.message, state.message

    runs = _task_runs(state)
    assert runs["validate"].state.is_failed() and runs["validate"].run_count == 1  # no retry
    assert runs["prepare"].state.is_completed()
    assert "after-validate" not in runs and not (root / "marker.txt").exists()
    assert set(runs) == {"check-params", "prepare", "validate"} | {n for n in runs if n.startswith("apply-params")}
    assert yaml.safe_load((root / "params.yaml").read_text())["validate"]["min_pixel_std"] == 0.9  # left applied

    assert "FAILED image_contrast" in _log_text(state, "FAILED image_contrast")
    summary = _artifacts(state)["advmix-validation"]
    assert "image_contrast" in summary.data and "nothing after the validate stage ran" in summary.data


def test_bad_override_fails_before_any_stage(flow_run, tmp_path):
    from flows.pipeline import advmix_pipeline

    state = advmix_pipeline(params_overrides={"data.nosuchkey": 1}, root=str(flow_run[0]), return_state=True)
    assert state.is_failed() and "data.nosuchkey: unknown key" in state.message
    assert set(_task_runs(state)) <= {n for n in _task_runs(state) if n.startswith("apply-params")}


@pytest.mark.slow
def test_a_held_dvc_lock_is_retried_and_a_failing_command_is_not(flow_run, tmp_path):
    """Real `dvc repro` commands: another process's DVC lock is transient (the retry runs once it is free); a stage
    command that exits non-zero is not retried, and its error names the stage and the command's own error line."""
    import threading

    from dvc.repo import Repo
    from prefect import flow

    from flows import pipeline

    root = tmp_path / "project"
    shutil.copytree(flow_run[0], root, symlinks=True)
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["broken"] = {"cmd": "python -c \"import sys; print('error: no such thing'); sys.exit(3)\""}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # DVC tries a held lock for 3 s: held for 10 s, the first attempt fails; the retry, 10 s later, finds it free
    quick = pipeline.run_stage.with_options(retry_delay_seconds=10)

    @flow
    def one_stage(stage: str):
        return quick(stage, str(root), False)

    held = threading.Event()

    def hold_lock():
        with Repo(str(root)) as repo, repo.lock:
            held.set()
            time.sleep(10)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    held.wait(10)
    state = one_stage("validate", return_state=True)
    holder.join()
    assert state.is_completed(), state.message
    (run,) = _task_runs(state).values()
    assert run.run_count == 2  # the first attempt met the lock
    state = one_stage("broken", return_state=True)
    assert state.is_failed()
    (run,) = _task_runs(state).values()
    assert run.run_count == 1
    assert "stage broken failed: no such thing" in pipeline.failure_line(state)


def test_stage_selection_and_what_is_transient():
    from advmix.project import ProjectError, select_stages
    from flows.pipeline import StageFailed, is_transient

    stages = ["check-params", "prepare", "validate", "train@nominal-0", "train@advmix-0", "report"]
    assert select_stages(stages, None) == stages
    assert select_stages(stages, ["report", "train"]) == ["check-params", "train@nominal-0", "train@advmix-0", "report"]
    with pytest.raises(ProjectError, match="--stage 'trian': no such stage; dvc.yaml has check-params, prepare, "
                                           "report, train, "):
        select_stages(stages, ["trian"])
    lock_line = "ERROR: Unable to acquire lock. Most likely another DVC process is running or was terminated abruptly."
    locked = StageFailed("train@nominal-0", 1, ["Running stage 'x'", lock_line])
    assert is_transient(locked) and is_transient(TimeoutError())
    failed = StageFailed("train@nominal-0", 1, ["> advmix train", "error: params.yaml: train.lr: bad",
                                                "ERROR: failed to reproduce 'train@nominal-0'"])
    assert not is_transient(failed) and str(failed) == "stage train@nominal-0 failed: params.yaml: train.lr: bad"
    assert str(StageFailed("x", 9, [])) == "stage x failed: exit status 9"
    assert not is_transient(FileNotFoundError("data/x")) and not is_transient(ValueError())


def test_the_artifact_is_the_reports_headline_drawn_by_its_renderer():
    """On the committed metrics/summary.json (a real one, written by the report stage): the same sentence and
    short table as the report's first screen; before any report, every metric as key/value."""
    import json

    from advmix.report.page import headline, short_table
    from flows.pipeline import metrics_markdown

    summary = json.loads((Path(__file__).parents[1] / "metrics" / "summary.json").read_text())
    table = metrics_markdown({"success": True}, summary)
    assert table.startswith("# advmix: results\n") and headline(summary) in table
    headers, rows = short_table(summary)
    assert "| " + " | ".join(headers) + " |" in table and "| " + " | ".join(rows[0]) + " |" in table
    flat = metrics_markdown({"success": True, "rho_realised": {"train": 0.95}})
    assert "| success | True |" in flat and "| rho_realised/train | 0.95 |" in flat
    assert "No metrics files yet." in metrics_markdown({})


def test_stage_list_follows_the_dag_with_validation_first(tmp_path):
    from advmix.project import list_stages

    spec = {"stages": {  # listed out of order; `probe` does not need validation, yet validation runs first
        "summary": {"cmd": "echo", "deps": ["out-nominal.txt", "out-advmix.txt"]},
        "probe": {"cmd": "echo", "deps": ["data"], "outs": ["probe.txt"]},
        "prepare": {"cmd": "echo", "outs": ["data"]},
        "validate": {"cmd": "echo", "deps": ["data"], "outs": ["validation.json"]},
        "train": {"foreach": ["nominal", "advmix"],
                  "do": {"cmd": "echo", "deps": ["validation.json", "probe.txt"], "outs": ["out-${item}.txt"]}},
    }}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    assert list_stages(tmp_path) == ["prepare", "validate", "probe", "train@nominal", "train@advmix", "summary"]


# ---------------------------------------------------------------- the deployment


def test_deployment_schedule_without_a_server():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.server.schemas.schedules import CronSchedule as ServerCron

    from flows.deploy import DEFAULT_CRON, build_deployment

    dep = build_deployment()
    schedule = dep.schedules[0].schedule
    assert isinstance(schedule, CronSchedule) and schedule.cron == DEFAULT_CRON == "0 3 * * 1"
    assert schedule.timezone == "UTC" and dep.schedules[0].active
    assert dep.name == "weekly" and dep.parameters["root"] == str(ROOT)
    fires = asyncio.run(ServerCron(cron=DEFAULT_CRON, timezone="UTC").get_dates(
        n=2, start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
    assert [d.isoformat() for d in fires] == ["2026-01-05T03:00:00+00:00", "2026-01-12T03:00:00+00:00"]  # Mondays

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [deployment] = config["deployments"]
    assert deployment["entrypoint"] == "flows/pipeline.py:advmix_pipeline"
    assert deployment["work_pool"]["name"] == "advmix-local"
    assert deployment["schedules"] == [{"cron": DEFAULT_CRON, "timezone": "UTC", "active": True}]
    [step] = config["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $ADVMIX_ROOT }}"}}


def test_deployment_registers_with_an_active_schedule(server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    from flows.deploy import DEFAULT_CRON, build_deployment

    dep_id = build_deployment().apply()
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment(dep_id)
            assert dep.name == "weekly" and dep.schedules[0].schedule.cron == DEFAULT_CRON and dep.schedules[0].active
            run = client.create_flow_run_from_deployment(dep_id)
            assert run.state.is_scheduled()
        finally:  # its runs would work in this checkout: the runner that the cron test serves must not find one
            for scheduled in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[dep_id]))):
                client.delete_flow_run(scheduled.id)
            client.delete_deployment(dep_id)


def test_prefect_yaml_pull_step_goes_to_advmix_root(server, tmp_path, monkeypatch):
    from prefect.deployments.steps.core import run_steps

    monkeypatch.chdir(ROOT)  # restored after the test
    monkeypatch.setenv("ADVMIX_ROOT", str(tmp_path))
    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    asyncio.run(run_steps(pull, print_function=lambda *a, **k: None))
    assert Path.cwd() == tmp_path.resolve()


# ---------------------------------------------------------------- advmix run


def test_run_help_and_bad_override(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "--stage" in result.output and "--force" in result.output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(parse_params({}).to_dict()))
    result = runner.invoke(app, ["run", "-S", "data.nosuchkey=1"])
    assert result.exit_code == 2 and "data.nosuchkey" in result.output, result.output


def test_run_once_from_the_project_folder(flow_run, monkeypatch):
    monkeypatch.chdir(flow_run[0])
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--stage", "prepare"])  # unchanged: DVC skips it
    assert result.exit_code == 0, result.output
    assert "no report in this run" in result.stdout and len(result.stdout.splitlines()) == 1  # no metrics JSON


def test_a_usage_error_of_run_exits_2_before_any_server_starts(flow_run):
    """An unknown stage is refused from dvc.yaml alone: exit 2, one line, and Prefect never imported."""
    code = ("import sys; from typer.testing import CliRunner; from advmix.cli import app; "
            "r = CliRunner().invoke(app, ['run', '--stage', 'nosuch']); print(r.exit_code); print(r.output); "
            "print('prefect' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=flow_run[0], capture_output=True, text=True, check=False)
    exit_code, *output, imported = res.stdout.strip().splitlines()
    assert exit_code == "2" and imported == "False", res.stdout + res.stderr
    errors = [line for line in output if line.startswith("error:")]
    assert len(errors) == 1 and "--stage 'nosuch': no such stage" in errors[0] and "Traceback" not in res.stdout


@pytest.mark.slow
def test_the_server_advmix_run_starts_dies_with_it(flow_run, tmp_path):
    """Without PREFECT_API_URL, `advmix run` starts a local server; a kill -9 of `advmix run` takes it down too."""
    import re
    import signal

    root = tmp_path / "project"
    shutil.copytree(flow_run[0], root, symlinks=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PREFECT_HOME": str(tmp_path / "home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    run = subprocess.Popen([str(BIN / "advmix"), "run", "--stage", "prepare"], cwd=root, env=env,
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = run.stderr.readline()
        match = re.search(r"Prefect server for this run: (\S+) \(pid (\d+)", line)
        assert match, line
        server = int(match[2])
        os.kill(run.pid, signal.SIGKILL)
        run.wait()

        def gone():
            try:
                os.killpg(server, 0)  # the server's whole process group
            except ProcessLookupError:
                return True
            return False

        _wait_for(gone, 30, "the server to stop", [])
    finally:
        for pid in (run.pid,):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- a schedule that fires, on a real server


@pytest.mark.slow
def test_a_cron_schedule_fires_on_a_real_server(server, tmp_path):
    """`flows/deploy.py --cron '* * * * * */10'` (every 10 s: cron's sixth field is seconds) serving the deployment's
    `prepare` stage on a tiny project, against the module's real server: a scheduled run starts, completes, and
    publishes the metrics artifact. The serve process is stopped at the end, whatever happens."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from flows.deploy import DEPLOYMENT_NAME

    env = server
    project = make_project(tmp_path / "project")
    procs: list[subprocess.Popen] = []
    with open(tmp_path / "serve.log", "w") as serve_log:
        try:
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "flows" / "deploy.py"), "--cron",
                                           "* * * * * */10", "--root", str(project), "--stage", "prepare"],
                                          env=env, stdout=serve_log, stderr=subprocess.STDOUT,
                                          start_new_session=True))

            def finished_run():  # the scheduler books many runs ahead: ask for the deployment's finished ones
                final = FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED])
                with get_client(sync_client=True) as client:
                    done = client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=final)),
                        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT_NAME])))
                return done[0] if done else None

            run = _wait_for(finished_run, 240, "a scheduled flow run to finish", procs)
        finally:
            _stop(procs)
    assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-3000:])
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(run.deployment_id)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert deployment.name == "weekly" and run.auto_scheduled  # made by the scheduler, not by hand
    assert "advmix-metrics" in {a.key for a in artifacts}
    assert (project / "dvc.lock").is_file()  # the stage ran in the project it names
    assert all(proc.poll() is not None for proc in procs)


def test_the_flows_import_from_any_folder(tmp_path):
    """flows/ is part of the installed project: no sys.path surgery in the flow, the deployment or `advmix run`."""
    res = subprocess.run([sys.executable, "-c", "import flows.deploy, flows.pipeline; print(flows.pipeline.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.strip()) == ROOT / "flows" / "pipeline.py"
    assert "sys.path" not in (ROOT / "flows" / "deploy.py").read_text()
