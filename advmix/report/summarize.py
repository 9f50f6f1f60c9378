"""The numbers of metrics/summary.json: per mode and split the mean and std over seeds, one seed-paired comparison
block per pair of modes, the perturbation set against its bar, and every mode under every model-selection rule.

The pairs: every mode against nominal, and AdvMix against each control, the other modes that read no group label
(RandMix, the same perturbation set drawn at random; the pixel-space and augmentation baselines). A comparison
`a_vs_b` says how much lower a's test_balanced error is than b's, relative to b's, and how much higher a's
worst-group accuracy is, each with its seed-paired 95% interval.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import replace
from typing import Any

from advmix.modes import GROUP_LABEL_MODES, NAMES, SELECTION_RULES
from advmix.params import SPLITS
from advmix.report.collect import Inputs, Run, mode_rank
from advmix.results import SPLIT_KEYS, Metric, metrics_of
from advmix.stats import paired_bootstrap

RULE_TEXT = {  # what each selection rule keeps and which labels it reads (advmix/classifier_training.py)
    "label_free": "the epoch of best val accuracy; reads no group label (the default: the attacks measure it)",
    "val_worst_group": "the epoch of best val worst-group accuracy, val accuracy breaking ties; reads the group "
                       "labels of val (a DFR refit: of the base's epoch by that rule)",
}
SELECTION_FIGURES = (("test_iid", "acc"), ("test_balanced", "error"), ("test_balanced", "worst_group_acc"))
CI_METHOD = ("seed-paired percentile bootstrap, 10,000 resamples of the seeds both modes share (a resample keeps "
             "each seed's pair together), 95%: relative test_balanced error reduction of the seed means, and "
             "the gain in the mean of the worst-case figure (worst_figure) on test_balanced")
REFERENCE, METHOD = "nominal", "advmix"
# A two-class task with a two-valued attribute (the faces, Waterbirds, CelebA) has 4 groups, and worst-group accuracy
# is the field's figure. With more (colordigits: 100 groups of about 8 test images at the default) the worst group
# is 0 for every model and says nothing: the report then uses the worst class's accuracy, its groups pooled.
MANY_GROUPS = 4
WORST_FIGURES = {"worst_group_acc": "worst-group accuracy", "worst_class_acc": "worst-class accuracy"}


def worst_figure(runs: list[Run]) -> dict[str, str]:
    """The worst-case figure of this report: its key in the split metrics, its name, and why it was chosen."""
    groups = max((len(r.splits.get("test_balanced", {}).get("group_acc") or {}) for r in runs), default=0)
    has_classes = all("worst_class_acc" in r.splits.get("test_balanced", {}) for r in runs)
    if groups > MANY_GROUPS and has_classes:
        return {"key": "worst_class_acc", "name": WORST_FIGURES["worst_class_acc"],
                "why": f"test_balanced has {groups} groups, too many for the worst of them to say anything; the "
                       "worst class (its groups pooled) instead"}
    return {"key": "worst_group_acc", "name": WORST_FIGURES["worst_group_acc"],
            "why": f"test_balanced has {groups} groups (label x spurious attribute)"}


def worst_of(summary: dict[str, Any]) -> dict[str, str]:
    """The summary's worst-case figure (summaries written before it was chosen used worst-group accuracy)."""
    return summary.get("worst_figure") or {"key": "worst_group_acc", "name": WORST_FIGURES["worst_group_acc"]}


def summarize(inputs: Inputs) -> dict[str, Any]:
    """summary.json."""
    runs, grouped = inputs.runs, by_mode(inputs.runs)
    worst = worst_figure(runs)
    return {
        "dataset": inputs.plan.dataset,
        "rho": inputs.plan.rho,
        "smoke": inputs.plan.smoke,
        "missing_runs": inputs.missing,
        "worst_figure": worst,  # what worst_group_gain in "comparisons" measures
        "perturbation_set": perturbation_set(inputs),
        "modes": {mode: mode_entry(group, runs) for mode, group in grouped.items()},
        "comparisons": comparisons(grouped, worst["key"]),
        "selection": selection_summary(runs),
        "ci_method": CI_METHOD,
    }


def mode_entry(group: list[Run], runs: list[Run]) -> dict[str, Any]:
    """A mode's means (and stds) per split, its run-level figures, and what it read."""
    entry: dict[str, Any] = {}
    for split in splits_of(group):
        entry[split] = {}
        for key in (*SPLIT_KEYS, "worst_class_acc"):  # the latter from by_group.csv (collect.worst_class_acc)
            entry[split][key], entry[split][f"{key}_std"] = mean_std(split_values(group, split, key))
    for metric in run_metrics(runs):  # run-level figures; PGD nested per epsilon
        mean = mean_std(values(group, metric))[0]
        if metric.entry is None:
            entry[metric.key] = mean
        else:
            entry.setdefault(metric.key, {})[metric.entry] = mean
    entry["group_labels_read"] = group[0].group_labels_read
    entry["seeds"] = sorted(r.seed for r in group)
    return entry


def comparison_pairs(modes: list[str]) -> list[tuple[str, str]]:
    """(mode, reference): every mode against nominal, then AdvMix against each control in `modes`."""
    pairs = [(m, REFERENCE) for m in modes if m != REFERENCE and REFERENCE in modes]
    return pairs + [(METHOD, c) for c in controls(modes)]


def controls(modes: list[str]) -> list[str]:
    """The modes AdvMix is held against besides nominal: every other one that reads no group label."""
    if METHOD not in modes:
        return []
    return [m for m in modes if m in NAMES and m not in (REFERENCE, METHOD, *GROUP_LABEL_MODES)]


def comparisons(grouped: dict[str, list[Run]], worst: str = "worst_group_acc") -> dict[str, dict[str, Any]]:
    return {f"{m}_vs_{ref}": {"mode": m, "reference": ref, **paired_gain(grouped[ref], grouped[m], worst)}
            for m, ref in comparison_pairs(list(grouped))}


def paired_gain(reference: list[Run], other: list[Run], worst: str = "worst_group_acc") -> dict[str, Any]:
    """`other` against `reference` on test_balanced over the seeds both have: the point estimates from the seed
    means (None without a shared seed, or a relative one where the reference makes no error) and their seed-paired
    bootstrap intervals (None with fewer than two seeds). `worst_group_gain` is the gain in the split metric
    `worst` (worst_figure's key)."""
    def at(runs: list[Run], key: str) -> dict[int, float]:
        return {r.seed: float(r.splits["test_balanced"][key]) for r in runs
                if r.splits.get("test_balanced", {}).get(key) is not None}

    e0, e1, w0, w1 = at(reference, "error"), at(other, "error"), at(reference, worst), at(other, worst)
    seeds = sorted(set(e0) & set(e1) & set(w0) & set(w1))
    out: dict[str, Any] = {"paired_seeds": seeds, "relative_error_reduction": None,
                           "relative_error_reduction_ci": None, "worst_group_gain": None, "worst_group_gain_ci": None}
    if not seeds:
        return out
    ref_error = statistics.fmean(e0[s] for s in seeds)
    if ref_error > 0:
        out["relative_error_reduction"] = (ref_error - statistics.fmean(e1[s] for s in seeds)) / ref_error
    out["worst_group_gain"] = statistics.fmean(w1[s] for s in seeds) - statistics.fmean(w0[s] for s in seeds)
    if len(seeds) < 2:
        return out
    with warnings.catch_warnings():  # a resample whose reference makes no error has no ratio: NaN, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        g = paired_bootstrap(seeds, [e0[s] for s in seeds], [e1[s] for s in seeds], [w0[s] for s in seeds],
                             [w1[s] for s in seeds])
    if out["relative_error_reduction"] is not None and all(map(math.isfinite, g.relative_error_reduction_ci)):
        out["relative_error_reduction_ci"] = list(g.relative_error_reduction_ci)
    out["worst_group_gain_ci"] = list(g.worst_group_gain_ci)
    return out


def perturbation_set(inputs: Inputs) -> dict[str, Any] | None:
    """The mixing rows, what they do to held-out inverted real train faces (metrics/layers.json) and, where measured,
    to the mixes training makes of them (metrics/layers_as_trained.json: with the residual under train.residual),
    and whether that meets the bar of mixing.max_label_change and mixing.min_transfer: as trained where measured,
    since those are the images the classifier sees; None without the analysis."""
    perturbation = (inputs.layers or {}).get("perturbation")
    real = perturbation.get("real") if isinstance(perturbation, dict) else None
    if not isinstance(real, dict):
        return None
    plan = inputs.plan
    trained = inputs.layers_as_trained
    as_trained = None if trained is None else {
        "residual": trained["residual"], "label_change": trained["label_change"],
        "spurious_transfer": trained["spurious_transfer"],
        "other_residual_transfer": trained["other_residual"]["spurious_transfer"]}
    judged = as_trained or real
    return {"layers": perturbation["layers"], "spurious": perturbation["spurious"], "partners": real["partners"],
            "measured_on": perturbation.get("measured_on", "every pair"), "pairs": real["n"],
            "label_change": real["label_change"], "spurious_transfer": real["spurious_transfer"],
            "as_trained": as_trained, "max_label_change": plan.max_label_change, "min_transfer": plan.min_transfer,
            "meets_bar": bool(judged["label_change"] <= plan.max_label_change
                              and judged["spurious_transfer"] >= plan.min_transfer)}


def rule_runs(runs: list[Run], rule: str) -> list[Run]:
    """The runs as `rule` selects them: the default rule's are the runs; another's swap in its clean metrics
    (runs without that rule's weights are left out)."""
    if rule == SELECTION_RULES[0]:
        return runs
    return [replace(r, splits=r.selection[rule]["splits"]) for r in runs if "splits" in r.selection.get(rule, {})]


def selection_summary(runs: list[Run]) -> dict[str, Any]:
    """Every mode under every rule, with the labels each read, per seed and against nominal under the same rule."""
    out: dict[str, Any] = {"rules": RULE_TEXT, "modes": {}}
    for rule in SELECTION_RULES:
        grouped = by_mode(rule_runs(runs, rule))
        for mode, group in grouped.items():
            entry = out["modes"].setdefault(mode, {"group_labels_in_training": group[0].group_labels_read})
            figures: dict[str, Any] = {"seeds": [r.seed for r in group],
                                       "epochs": [r.selection.get(rule, {}).get("epoch") for r in group]}
            for split, key in SELECTION_FIGURES:
                per_seed = [r.splits.get(split, {}).get(key) for r in group]
                figures[f"{split}_{key}"], figures[f"{split}_{key}_std"] = mean_std(
                    [v for v in per_seed if v is not None])
                figures[f"{split}_{key}_per_seed"] = per_seed
            if mode != REFERENCE and REFERENCE in grouped:
                figures["vs_nominal"] = paired_gain(grouped[REFERENCE], group)
            entry[rule] = figures
    return out


def by_mode(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by mode, modes in report order."""
    out: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (mode_rank(r.mode), r.seed)):
        out.setdefault(run.mode, []).append(run)
    return out


def mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std over seeds; std is None for one seed (it says nothing about spread)."""
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None


def values(runs: list[Run], metric: Metric) -> list[float]:
    """One figure of each run, nulls dropped."""
    return [float(v) for v in (r.figure(metric) for r in runs) if v is not None]


def split_values(runs: list[Run], split: str, key: str) -> list[float]:
    """The split metric `key` of each run that has `split`, nulls dropped."""
    return [float(v) for v in (r.splits[split].get(key) for r in runs if split in r.splits) if v is not None]


def run_metrics(runs: list[Run]) -> list[Metric]:
    """The run-level figures of the comparison (results.METRICS; PGD per epsilon the runs hold)."""
    return [m for m in metrics_of([r.result for r in runs]) if m.split is None]


def splits_of(runs: list[Run]) -> list[str]:
    names = {s for r in runs for s in r.splits}
    return [s for s in SPLITS if s in names] + sorted(names - set(SPLITS))
