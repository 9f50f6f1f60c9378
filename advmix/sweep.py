"""The rho sweep: AdvMix against nominal over the strength of the spurious correlation, as DVC experiments.

`advmix sweep --queue` queues one `dvc exp run` per rho; each experiment trains nominal and AdvMix for every
seed in `train.seeds` and evaluates them. `dvc queue start -j N` runs them in isolated workspaces (N at a
time, on one host or, with a shared DVC remote, several). `advmix sweep --plot` reads the finished
experiments (`dvc.api.exp_show`) and draws the relative error reduction on test_balanced against rho.

`--small` adds overrides that make each experiment take minutes on a CPU: smaller splits, the committed
generator reused (`gan.pretrained`; the GAN models faces, not the correlation), a shorter inversion and
fewer attacked images. The plot says which profile produced it.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import dvc.api
import matplotlib
import matplotlib.pyplot as plt

from advmix import paths
from advmix.figures import save_figure
from advmix.files import atomic_write_json

RHOS = (0.8, 0.9, 0.95, 0.99)
SWEEP_MODES = ("nominal", "advmix")
SMALL = {
    "data.sizes.train": 1000, "data.sizes.val": 200, "data.sizes.test_iid": 200, "data.sizes.test_balanced": 400,
    "data.sizes.test_flipped": 200, "gan.pretrained": "models/gan/generator.pt", "extract.encoder_steps": 300,
    "extract.encoder_real_steps": 100, "extract.refine_steps": 10, "mixing.analysis_pairs": 512,
    "evaluate.robust_images": 128,
}
# an experiment is finished when its metrics/summary.json holds the headline (under its name before 2026-12-07 too)
FINISHED = ("comparisons.advmix_vs_nominal.relative_error_reduction",
            "advmix_vs_nominal.relative_error_reduction_balanced")


class SweepError(Exception):
    """A sweep that cannot go on; the message is one line for the user."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code  # the exit code of `advmix sweep`: 2 for a usage mistake


def command(queue_them: bool, plot_them: bool, rhos, small: bool, dataset: str, echo=print) -> None:
    """`advmix sweep`: exactly one of queue the experiments (`queue`) or plot the finished ones on `dataset`."""
    if queue_them == plot_them:
        raise SweepError("give exactly one of --queue and --plot", 2)
    if queue_them:
        queue(tuple(rhos or RHOS), small, echo=echo)
        echo("queued; start with `dvc queue start -j 1` (or -j N), follow with `dvc queue status`")
    else:
        echo(plot_experiments(dataset))


def queue(rhos=RHOS, small: bool = False, echo=print) -> None:
    """Queue the experiments of `queue_commands`, echoing each command."""
    for cmd in queue_commands(rhos, small):
        echo(" ".join(cmd))
        if subprocess.run(cmd, check=False).returncode:
            raise SweepError(f"`{' '.join(cmd)}` failed")


def plot_experiments(dataset: str) -> str:
    """Draw reports/sweep.png and write reports/sweep.json from the finished experiments on `dataset`."""

    points = collect(dvc.api.exp_show(num=-1), dataset)
    if not points:
        raise SweepError(f"no finished sweep experiment on {dataset}: `dvc exp show -A` has none with data.rho and "
                         "metrics/summary.json")
    names = sorted({str(p["experiment"]) for p in points})
    plot(points, paths.SWEEP_FIGURE, f"AdvMix vs nominal on {dataset}; experiments {', '.join(names)}")
    atomic_write_json(paths.SWEEP_JSON, {"by_rho": by_rho(points), "points": points})
    return f"{paths.SWEEP_FIGURE}: {len(points)} (rho, seed) points from {len(names)} experiments"


def queue_commands(rhos=RHOS, small: bool = False, extra: dict[str, Any] | None = None) -> list[list[str]]:
    """One `dvc exp run --queue` per rho (the seeds run inside each experiment, from `train.seeds`)."""
    sets = {"train.modes": "[" + ",".join(SWEEP_MODES) + "]"} | (SMALL if small else {}) | (extra or {})
    commands = []
    for rho in rhos:
        cmd = ["dvc", "exp", "run", "--queue", "-n", f"rho-{rho}{'-small' if small else ''}", "-S", f"data.rho={rho}"]
        for key, value in sets.items():
            cmd += ["-S", f"{key}={value}"]
        commands.append(cmd)
    return commands


def _find(row: dict[str, Any], suffix: str) -> Any:
    """A column of an exp_show row by its name, whatever file prefix DVC put before it; None where DVC shows
    a placeholder ("!" for a value a running or failed experiment has not written)."""
    hits = [v for k, v in row.items() if (k == suffix or k.endswith(":" + suffix)) and v not in ("!", "-", "")]
    return hits[0] if hits else None


def collect(rows: list[dict[str, Any]], dataset: str | None = None) -> list[dict[str, Any]]:
    """Per experiment and seed: rho, the nominal and AdvMix test_balanced errors and the relative reduction.

    `rows` come from `dvc.api.exp_show(num=-1)`, newest commit first. Only experiments count: a baseline
    commit holds the full-size pipeline's metrics, not a sweep point. Of experiments that share a name (queued
    again on a later commit) the first, newest, is kept; experiments on another dataset than `dataset` are
    left out.
    """
    out, seen = [], set()
    for row in rows:
        name = row.get("Experiment") or row.get("rev")
        rho = _find(row, "data.rho")
        if row.get("typ", "branch_commit") in ("baseline", "workspace") or name in seen:
            continue
        if row.get("State") not in (None, "Success"):
            continue  # queued, running (its files may be the commit's or half-written) or failed
        if dataset is not None and _find(row, "data.name") not in (None, dataset):
            continue
        if rho is None or all(_find(row, key) is None for key in FINISHED):
            continue
        seen.add(name)
        seeds = sorted({int(k.rsplit("_s", 1)[1].split(".")[0]) for k in row
                        if "eval_nominal_s" in k and k.endswith("splits.test_balanced.error")})
        for seed in seeds:
            nominal = _find(row, f"eval_nominal_s{seed}.splits.test_balanced.error")
            advmix = _find(row, f"eval_advmix_s{seed}.splits.test_balanced.error")
            if nominal is None or advmix is None:
                continue
            out.append({"experiment": name, "rho": float(rho), "seed": seed,
                        "nominal_error": float(nominal), "advmix_error": float(advmix),
                        "reduction": _reduction(float(nominal), float(advmix))})
    return out


def _reduction(nominal: float, advmix: float) -> float:
    """Relative test_balanced error reduction; NaN where nominal makes no error (no ratio to speak of)."""
    return (nominal - advmix) / nominal if nominal > 0 else math.nan


def by_rho(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rho: the mean errors over seeds and the relative reduction of the means, the definition of
    metrics/summary.json's comparisons.advmix_vs_nominal.relative_error_reduction (not the mean of per-seed
    ratios)."""
    out = []
    for rho in sorted({p["rho"] for p in points}):
        at = [p for p in points if p["rho"] == rho]
        nominal = sum(p["nominal_error"] for p in at) / len(at)
        advmix = sum(p["advmix_error"] for p in at) / len(at)
        out.append({"rho": rho, "seeds": len(at), "nominal_error": nominal, "advmix_error": advmix,
                    "reduction": _reduction(nominal, advmix)})
    return out


def plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    """Relative error reduction against rho: one dot per seed, the reduction of the seed-mean errors as a line."""
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.scatter([p["rho"] for p in points], [100 * p["reduction"] for p in points], s=18, alpha=0.6, label="one seed")
    line = by_rho(points)
    ax.plot([r["rho"] for r in line], [100 * r["reduction"] for r in line], "o-", color="C3",
            label="reduction of the mean errors over seeds")
    ax.axhline(21, ls="--", color="grey", lw=1, label="paper: 21%")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("rho (label / spurious agreement in train)")
    ax.set_ylabel("test_balanced error reduction, %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
