"""The report's own figures: the effect with its intervals (a forest plot), accuracy per group, the worst mixes.
Each function returns a matplotlib figure, or None when there is nothing to draw."""

from __future__ import annotations

import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from advmix.report.collect import Run
from advmix.report.summarize import by_mode

WORST_MIXES_SHOWN = 8


def forest(comparisons: dict[str, dict[str, Any]], worst: str = "worst-group accuracy") -> Any:
    """One row per comparison: the relative test_balanced error reduction and the worst-group gain, each with its
    seed-paired 95% interval; the dashed line is "no difference"."""
    rows = [(f"{c['mode']} vs {c['reference']}", c) for c in comparisons.values()
            if c.get("relative_error_reduction_ci") is not None]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 0.24 * len(rows) + 1.0), sharey=True)
    y = np.arange(len(rows))[::-1]
    first_control = next((i for i, (_, c) in enumerate(rows) if c["reference"] != rows[0][1]["reference"]), None)
    panels = (("relative_error_reduction", "lower test_balanced error (relative)", 100.0, "%"),
              ("worst_group_gain", f"higher {worst}", 1.0, ""))
    for ax, (key, title, scale, unit) in zip(axes, panels, strict=True):
        point = np.array([c[key] for _, c in rows]) * scale
        lo, hi = (np.array([c[f"{key}_ci"][i] for _, c in rows]) * scale for i in (0, 1))
        beyond = (lo > 0) | (hi < 0)
        colours = np.where(beyond, "#1f5fa8", "#999999")
        ax.hlines(y, lo, hi, colors=colours, lw=2)
        ax.scatter(point, y, c=colours, zorder=3, s=14)
        ax.axvline(0, color="#444", lw=0.8, ls="--")
        if first_control is not None:  # the comparisons against nominal above, AdvMix against the controls below
            ax.axhline(y[first_control] + 0.5, color="#bbb", lw=0.8)
        ax.set_title(title + (f" ({unit})" if unit else ""), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(y, [name for name, _ in rows])
    fig.suptitle("Effect and 95% seed-paired interval (blue: the interval excludes 0)", fontsize=9)
    fig.tight_layout()
    return fig


def by_group(runs: list[Run]) -> Any:
    """One bar per group per mode: where a mode's accuracy comes from, and which group it leaves behind."""
    table: dict[str, dict[str, list[float]]] = {}  # mode -> group -> accuracies over seeds
    groups: list[str] = []
    for run in runs:
        if run.by_group is None:
            continue
        rows = run.by_group[run.by_group["split"] == "test_balanced"]
        for group, acc in zip(rows["group"].astype(str), rows["acc"].astype(float), strict=True):
            table.setdefault(run.mode, {}).setdefault(group, []).append(acc)
            if group not in groups:
                groups.append(group)
    if not table:
        return None
    modes = list(by_mode([r for r in runs if r.mode in table]))
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) + 2), 3.4))
    x = np.arange(len(groups))
    for i, mode in enumerate(modes):
        means = [statistics.fmean(table[mode][g]) if table[mode].get(g) else np.nan for g in groups]
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, label=mode)
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("test_balanced accuracy per group (label / spurious attribute), mean over seeds", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def worst_mixes(arrays: dict[str, np.ndarray], class_names: list[str]) -> Any:
    """Clean images over their worst mixes; under each mix the label and what each classifier predicted on it."""
    n = min(len(arrays["clean"]), WORST_MIXES_SHOWN)
    preds = [k for k in arrays if k.startswith("pred_")]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)

    def name(i: Any) -> str:
        i = int(i)
        return class_names[i] if 0 <= i < len(class_names) else str(i)

    for j in range(n):
        for row, key in enumerate(("clean", "mixed")):
            ax = axes[row, j]
            ax.imshow(arrays[key][j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, j].set_xlabel("\n".join(name(arrays[k][j]) for k in ("label", *preds)), fontsize=7)
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("mixed")
    under = " / ".join(["label", *(k.removeprefix("pred_") for k in preds)])
    fig.suptitle(f"The worst mixes against nominal (under each: {under})", fontsize=9)
    return fig
