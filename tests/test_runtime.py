"""CPU threads per stage process (advmix.runtime.set_threads): the rule, the overrides and the registry.

Nothing here runs torch work: the tests set and read thread counts, and the one subprocess imports no torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advmix import runtime

ENV = ("ADVMIX_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "PYTEST_XDIST_WORKER_COUNT", "DVC_ROOT",
       "DVC_EXP_NAME", "ADVMIX_DEBUG_THREADS")


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """A 2-core affinity, none of the variables the rule reads, a private registry, torch at 2 threads (restored
    afterwards), and set_num_interop_threads recorded rather than called (torch allows it once per process)."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(runtime.RUNTIME_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    interop: list[int] = []
    monkeypatch.setattr(torch, "set_num_interop_threads", interop.append)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield interop
    torch.set_num_threads(threads)


def test_alone_takes_every_core(clean):
    assert runtime.set_threads() == 2 and torch.get_num_threads() == 2
    assert clean == [2]


def test_never_more_than_torch_had(clean):
    torch.set_num_threads(1)  # as the test modules do before they call the CLI in-process
    assert runtime.set_threads() == 1


def test_advmix_threads_wins(clean, monkeypatch):
    monkeypatch.setenv("ADVMIX_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.set_threads() == 3  # above the cores and above torch's count: the user said so
    assert clean == [3]


def test_bad_advmix_threads_is_named(clean, monkeypatch):
    monkeypatch.setenv("ADVMIX_THREADS", "0")
    with pytest.raises(ValueError, match="ADVMIX_THREADS='0'"):
        runtime.set_threads()


def test_users_omp_num_threads_is_left_alone(clean, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch read it at start; here torch was set to 2 since
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert runtime.set_threads() == 2
    assert clean == []


def test_torchrun_ranks_share_the_cores(clean, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.set_threads() == 1


def test_torchrun_default_omp_is_replaced_by_the_share(clean, monkeypatch):
    # torchrun puts OMP_NUM_THREADS=1 in every rank's environment when there are several ranks and it was unset
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    torch.set_num_threads(1)
    assert runtime.set_threads() == 2


@pytest.mark.parametrize(("workers", "threads"), [("1", 2), ("2", 1), ("8", 1)])
def test_xdist_workers_share_the_cores(clean, monkeypatch, workers, threads):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    assert runtime.set_threads() == threads


def test_interop_refusal_is_harmless(clean, monkeypatch):
    def refuse(n):
        raise RuntimeError("cannot set number of interop threads after parallel work has started")

    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert runtime.set_threads() == 1


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid is free (reuse within the test is not a worry)
    return proc.pid


def test_registry_counts_live_processes_and_drops_stale_files(clean, tmp_path):
    folder = runtime.registry_dir()
    stop = tmp_path / "stop"
    code = ("import os, time; from pathlib import Path; from advmix.runtime import register; register(); "
            f"stop = Path({str(stop)!r})\nwhile not stop.exists(): time.sleep(0.05)")
    other = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        deadline = time.time() + 20
        while not (folder / str(other.pid)).exists():
            assert other.poll() is None and time.time() < deadline, "the other process did not register"
            time.sleep(0.05)
        folder.mkdir(parents=True, exist_ok=True)
        dead = _dead_pid()
        (folder / str(dead)).write_text("")
        (folder / str(os.getppid())).write_text("1")  # a live pid, but not the process that registered then
        (folder / "notes.txt").write_text("ignored")

        assert runtime.sharing()["registry"] == 2  # this process and the other
        assert not (folder / str(dead)).exists() and not (folder / str(os.getppid())).exists()
        assert runtime.set_threads() == 1
    finally:
        stop.touch()
        other.wait(timeout=20)
    assert not (folder / str(other.pid)).exists()  # removed by its atexit
    assert runtime.live_processes() == 1
    assert runtime.set_threads() == 1  # decided when asked: torch already had 1, and never more than that


def _dvc_run_record(root: Path, task: str, pid: int, returncode: int | None) -> None:
    folder = root / ".dvc" / "tmp" / "exps" / "run" / task
    folder.mkdir(parents=True)
    (folder / f"{task}.json").write_text(json.dumps({"pid": pid, "stdin": None, "stdout": None, "stderr": None,
                                                     "returncode": returncode}))


def test_running_dvc_experiments_share_the_cores(clean, monkeypatch, tmp_path):
    root = tmp_path / "repo"
    _dvc_run_record(root, "a1b2c3", os.getpid(), None)  # running
    _dvc_run_record(root, "d4e5f6", os.getppid(), None)  # running
    _dvc_run_record(root, "0f0f0f", os.getppid(), 0)  # finished
    _dvc_run_record(root, "dead00", _dead_pid(), None)  # killed
    (root / ".dvc" / "tmp" / "exps" / "run" / "broken").mkdir()
    monkeypatch.setenv("DVC_ROOT", str(root))
    assert runtime.dvc_experiments() == 0  # not inside an experiment: `dvc repro` sets DVC_ROOT too
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert runtime.dvc_experiments() == 2
    assert runtime.sharing()["declared"] == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun inside each experiment: 2 x 2
    assert runtime.sharing()["declared"] == 4
    assert runtime.set_threads() == 1


def test_debug_line(clean, monkeypatch, capsys):
    monkeypatch.setenv("ADVMIX_DEBUG_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    runtime.set_threads()
    assert "advmix: 1 torch thread(s): 2 cores shared by 2" in capsys.readouterr().err


def test_this_test_worker_runs_on_its_share_of_the_cores():
    """The suite's own parallel part: under pytest-xdist, conftest gave this worker cores // workers threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not workers:
        pytest.skip("the suite runs in one process (-n 0)")
    assert 1 <= torch.get_num_threads() <= max(1, runtime.cpu_cores() // workers)  # never oversubscribed
