"""Where training runs: the device, the CPU threads, and the torchrun process group shared by GAN and classifier
training.

Both trainers average gradients through torch's DistributedDataParallel. `average_grads` (one flat all-reduce
after the backward pass) is left for the GAN's lazy R1 step: a double backward, which DDP's reducer does not
support.

CPU threads (docs/threads.md): torch's OpenMP threads spin while they wait for each other, so two processes that
each take every core run 10-20x slower, not 2x. `set_threads` gives each stage process its share of the cores.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

THREADS_ENV = "ADVMIX_THREADS"  # N: torch's intra-op threads, whatever else is running
RUNTIME_DIR_ENV = "ADVMIX_RUNTIME_DIR"  # the registry's folder is $ADVMIX_RUNTIME_DIR/procs (tests, odd setups)
DEBUG_ENV = "ADVMIX_DEBUG_THREADS"  # set: one line on stderr with the decision and its inputs


def pick_device(choice: str, key: str = "device"):
    """torch.device for `auto` | `cpu` | `cuda`; `key` names the param in the error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is available")
    return torch.device("cuda" if choice in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, initialising the process group once; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def average_grads(module, world: int) -> None:
    """All-reduce the gradients of `module` (one flat buffer) and divide by the world size."""
    if world <= 1:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def all_ranks(obj: Any, world: int) -> list:
    """`obj` from every rank, in rank order (e.g. RNG states for a resumable checkpoint)."""
    if world <= 1:
        return [obj]

    everyone: list = [None] * world
    dist.all_gather_object(everyone, obj)
    return everyone


def cpu_cores() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, cgroup cpusets), not the whole machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS
        return os.cpu_count() or 1


def registry_dir() -> Path:
    """The folder of running advmix stage processes: one file per process, named by its pid."""
    base = os.environ.get(RUNTIME_DIR_ENV) or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"advmix-{getattr(os, 'getuid', lambda: 0)()}")
    return Path(base) / "procs"


def _start_time(pid: int) -> str:
    """When `pid` started (clock ticks since boot, field 22 of /proc/<pid>/stat); "" without /proc.

    A pid the kernel has handed to a later process reads differently, so a stale file of a killed stage does not
    count the stranger that now holds its pid.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str = "") -> bool:
    """Whether `pid` runs (and, when `started` is known, is still the process that started then)."""
    try:
        os.kill(pid, 0)
    except OSError:  # ProcessLookupError: gone; PermissionError: another user's process holds the pid now
        return False
    return not started or _start_time(pid) == started


_mine: set[Path] = set()  # this process's registry files (one per folder: the tests move the folder)


def register() -> Path:
    """Put this process in the registry; its file goes at exit. Idempotent.

    A stage killed with SIGKILL leaves its file behind: `live_processes` drops it once the pid is dead.
    """
    folder = registry_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry = folder / str(os.getpid())
    entry.write_text(_start_time(os.getpid()))
    if not _mine:
        atexit.register(_unregister)
    _mine.add(entry)
    return entry


def _unregister() -> None:
    for entry in _mine:
        if entry.name == str(os.getpid()):  # a forked child that exits normally must not take its parent's file
            entry.unlink(missing_ok=True)


def live_processes() -> int:
    """Running advmix processes in the registry; the files of dead ones are removed."""
    folder = registry_dir()
    if not folder.is_dir():
        return 0
    count = 0
    for entry in folder.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            started = entry.read_text().strip()
        except OSError:  # removed meanwhile
            continue
        if _alive(int(entry.name), started):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return count


def dvc_experiments() -> int:
    """DVC experiments running now, this one included (`dvc queue start -j N` runs up to N); 0 outside one.

    DVC gives a queued experiment's stages DVC_EXP_NAME, DVC_EXP_BASELINE_REV and DVC_ROOT (the parent repository;
    the stage itself runs in a copy under .dvc/tmp/exps/) but nothing that says how many run beside it. The queue
    keeps one record per running experiment, $DVC_ROOT/.dvc/tmp/exps/run/<task>/<task>.json, {"pid": ...,
    "returncode": null} until it ends (dvc_task's ManagedProcess; `dvc exp run` in the workspace writes
    run/workspace/workspace.json). That is DVC 3 internals, read best effort: a layout change makes this 0 and the
    registry still counts the stages. Unlike the registry it does not depend on when each stage starts.
    """
    root = os.environ.get("DVC_ROOT")
    if not root or not os.environ.get("DVC_EXP_NAME"):
        return 0
    run = Path(root, ".dvc", "tmp", "exps", "run")
    count = 0
    for task in run.iterdir() if run.is_dir() else ():
        try:
            info = json.loads((task / f"{task.name}.json").read_text())
        except (OSError, ValueError):
            continue
        pid = info.get("pid") if isinstance(info, dict) else None
        if isinstance(pid, int) and info.get("returncode") is None and _alive(pid):
            count += 1
    return count


def _env_int(name: str) -> int:
    """A positive whole number from the environment; 0 when unset or blank."""
    value = os.environ.get(name, "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
    return int(value)


def sharing() -> dict[str, int]:
    """How many advmix processes share this one's cores, by source; `set_threads` takes the largest.

    `declared` is what the launchers say: running DVC experiments x torchrun ranks per experiment. `registry` is
    what runs now, and catches what nothing declares (two `advmix train` in two shells, a DVC experiment beside a
    `dvc repro`). `PYTEST_XDIST_WORKER_COUNT` is pytest-xdist's worker count.
    """
    register()
    return {"declared": max(1, dvc_experiments()) * max(1, _env_int("LOCAL_WORLD_SIZE")),
            "registry": live_processes(),
            "PYTEST_XDIST_WORKER_COUNT": _env_int("PYTEST_XDIST_WORKER_COUNT")}


def set_threads() -> int:
    """Give torch this process's share of the CPU cores; return torch's intra-op thread count afterwards.

    threads = max(1, cores // sharing), cores from the affinity mask, sharing from `sharing()`, and never more than
    torch has already: its default counts physical cores, not hyperthreads, and a lower count someone set on
    purpose (the tests' one thread) stays. Overrides: ADVMIX_THREADS=N wins; an OMP_NUM_THREADS of the user's is
    left alone. torchrun's own OMP_NUM_THREADS=1 (it sets that for every rank when there are several and the
    variable is unset) is not the user's: each rank gets cores // sharing instead.

    Decided once, when the stage starts: a stage that started alone keeps its threads when another starts later
    (the later one still takes only its share). Registers the process either way, so that others count it.
    """
    shares = sharing()
    forced, omp = os.environ.get(THREADS_ENV, "").strip(), os.environ.get("OMP_NUM_THREADS", "").strip()
    torchrun_default = omp == "1" and _env_int("LOCAL_WORLD_SIZE") > 1
    cores = cpu_cores()
    if forced:
        threads = _env_int(THREADS_ENV)
        why = f"{THREADS_ENV}={forced}"
    elif omp and not torchrun_default:
        threads = 0
        why = f"OMP_NUM_THREADS={omp}, left alone"
    else:
        cap = cores if torchrun_default else torch.get_num_threads()
        threads = max(1, min(cap, cores // max(shares.values())))
        why = f"{cores} cores shared by {max(shares.values())}, at most {cap}"
    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # allowed once per process, and only before any inter-op work has started
            pass
    if os.environ.get(DEBUG_ENV):
        inputs = ", ".join(f"{k} {v}" for k, v in shares.items())
        print(f"advmix: {torch.get_num_threads()} torch thread(s): {why} ({inputs})", file=sys.stderr)
    return torch.get_num_threads()


def rank_and_device(choice: str, key: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): `choice` is the device param (`auto` | `cpu` | `cuda`, named `key` in errors);
    under torchrun on CUDA each rank takes its own GPU."""
    rank, world = distributed()
    device = pick_device(choice, key)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    return rank, world, device
