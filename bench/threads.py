"""Torch processes side by side on the CPU: torch's default threads against advmix's share (runtime.set_threads).

    python bench/threads.py --procs 2 --steps 200

Each process trains a small conv net (three 3x3 convolutions, 32-64 channels, and a linear head) on one fixed
batch of 64 random 32x32 RGB images for --steps SGD steps, after 5 untimed warm-up steps. Three rounds:
  alone     one process, torch's default threads (the yardstick);
  default   --procs processes at once, torch's default threads each;
  advmix    --procs processes at once, each calling advmix.runtime.set_threads() first.
The processes of a round start together: each registers (a private registry folder, not the real one), waits until
all have, then decides its threads and runs, so every process counts the others. (A real stage decides when it
starts: see docs/threads.md.) Prints seconds per process, each round's slowest process over `alone`, and
default / advmix. OMP_NUM_THREADS, MKL_NUM_THREADS and ADVMIX_THREADS are removed from the workers' environment
(they would decide instead of the rule). Run it on an otherwise idle machine: anything else running skews it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# what would decide instead of torch's default or the rule; removed from the workers' environment
DECIDING = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ADVMIX_THREADS", "LOCAL_WORLD_SIZE", "PYTEST_XDIST_WORKER_COUNT",
            "DVC_EXP_NAME")


def worker(policy: str, steps: int, batch: int, ready: Path, go: Path) -> dict:
    """One process of a round: register (advmix), wait for the others, decide threads, time the steps."""
    from advmix import runtime

    if policy == "advmix":
        runtime.register()
    (ready / str(os.getpid())).touch()
    while not go.exists():
        time.sleep(0.01)
    import torch
    from torch import nn

    threads = runtime.set_threads() if policy == "advmix" else torch.get_num_threads()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"policy": policy, "pid": os.getpid(), "threads": threads, "seconds": time.perf_counter() - t0}


def run_round(policy: str, procs: int, steps: int, batch: int) -> list[dict]:
    """`procs` workers started together; their results."""
    with tempfile.TemporaryDirectory(prefix="advmix-bench-threads-") as tmp:
        ready, go = Path(tmp, "ready"), Path(tmp, "go")
        ready.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in DECIDING} | {"ADVMIX_RUNTIME_DIR": str(Path(tmp))}
        cmd = [sys.executable, __file__, "--worker", policy, "--steps", str(steps), "--batch", str(batch),
               "--ready", str(ready), "--go", str(go)]
        workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        deadline = time.time() + 120
        while len(list(ready.iterdir())) < procs:
            if time.time() > deadline or any(w.poll() is not None for w in workers):
                for w in workers:
                    w.kill()
                raise RuntimeError(f"{policy}: the workers did not all start")
            time.sleep(0.05)
        go.touch()
        results = []
        for w in workers:
            out, _ = w.communicate()
            if w.returncode:
                raise RuntimeError(f"{policy}: a worker exited {w.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2, help="processes side by side")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--worker", choices=["default", "advmix"], help=argparse.SUPPRESS)
    ap.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch, args.ready, args.go)), flush=True)
        return []

    from advmix.runtime import cpu_cores

    dropped = [k for k in DECIDING if k in os.environ]
    if dropped:
        print(f"note: {', '.join(dropped)} removed from the workers' environment", file=sys.stderr)
    rows = []
    for name, policy, procs in (("alone", "default", 1), ("default", "default", args.procs),
                                ("advmix", "advmix", args.procs)):
        for r in run_round(policy, procs, args.steps, args.batch):
            rows.append({"round": name, **r})
    worst = {name: max(r["seconds"] for r in rows if r["round"] == name) for name in ("alone", "default", "advmix")}
    print(f"{cpu_cores()} cores, {args.procs} processes side by side, {args.steps} steps of batch {args.batch}")
    print(f"{'round':8s} {'pid':>8s} {'threads':>7s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['round']:8s} {r['pid']:8d} {r['threads']:7d} {r['seconds']:8.2f}")
    for name in ("default", "advmix"):
        print(f"{name}: slowest process {worst[name] / worst['alone']:.1f}x the lone process")
    print(f"default / advmix (slowest process): {worst['default'] / worst['advmix']:.1f}x")
    return rows


if __name__ == "__main__":
    main()
