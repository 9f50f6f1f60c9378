"""What the report reads, checked: the runs the params plan and their evaluations, the worst mixes, and the earlier
stages' figures and metrics. Nothing here computes a result; a file that cannot be read is a ReportError naming it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from advmix import results
from advmix.modes import NAMES as MODE_NAMES
from advmix.modes import dfr_run
from advmix.paths import (
    DVC_LOCK,
    EVAL_METRICS,
    GAN_METRICS,
    GAN_MIXING,
    GAN_SAMPLES,
    INVERSION_FIGURE,
    LAYERS_AS_TRAINED,
    LAYERS_FIGURE,
    LAYERS_METRICS,
    WORST_MIXES,
    eval_by_group,
    validation_metrics,
)
from advmix.results import EvalFileError, EvalResult, Metric, parse

MODE_ORDER = (*MODE_NAMES, *(dfr_run(m) for m in MODE_NAMES))  # advmix/modes.py; DFR refits last
BY_GROUP_COLUMNS = ("split", "group", "n", "acc")
WORST_MIXES_KEYS = ("clean", "mixed", "label")  # and pred_<mode> per classifier that read the mixes
# (caption, path, stage): figures the earlier stages draw, embedded when present; tests/test_report.py checks that
# each is an out of the named stage in dvc.yaml and a dep of the report
STAGE_FIGURES = (
    ("Which W+ layers carry what", LAYERS_FIGURE, "analyze-layers"),
    ("GAN samples", GAN_SAMPLES, "train-gan"),
    ("GAN style mixing", GAN_MIXING, "train-gan"),
    ("W+ inversion of real images", INVERSION_FIGURE, "extract"),
)
EVAL_NAME = re.compile(r"(?P<mode>.+)-s(?P<seed>\d+)\.json")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportError(ValueError):
    """A report input that cannot be read; the message names the file and what was expected."""


@dataclass
class Run:
    """One evaluated (mode, seed): its eval file, with the split metrics as plain dicts (a selection rule other
    than the default swaps in its own, summarize.rule_runs)."""

    result: EvalResult
    path: Path
    splits: dict[str, dict[str, Any]]
    by_group: pd.DataFrame | None = None  # results/eval/<mode>-s<seed>/by_group.csv

    @property
    def mode(self) -> str:
        return self.result.mode

    @property
    def seed(self) -> int:
        return self.result.seed

    @property
    def group_labels_read(self) -> str:  # in training: none | train (Group DRO) | val (a DFR refit)
        return self.result.group_labels_read

    @property
    def selection(self) -> dict[str, Any]:  # rule -> {"epoch", "splits" (other rules only)}
        return {rule: entry.to_json() for rule, entry in self.result.selection.items()}

    def figure(self, metric: Metric) -> float | None:
        """`metric` of this run, split metrics from `splits` (so under the run's selection rule)."""
        if metric.split is not None:
            return self.splits.get(metric.split, {}).get(metric.key)
        return results.value(self.result, metric)


@dataclass(frozen=True)
class Plan:
    """What the params ask the report to show."""

    dataset: str
    rho: float
    runs: frozenset[tuple[str, int]]  # (mode or dfr_<base>, seed) of train.modes, dfr.bases x train.seeds
    stages: frozenset[str]  # the DVC stage names of this plan, for the lineage table
    max_label_change: float  # the perturbation set's bar (mixing.*)
    min_transfer: float
    params_yaml: str  # the resolved params, shown at the end of the page
    smoke: str | None = None  # why this run is too small to measure an effect (a quick profile, a test), or None


@dataclass
class Inputs:
    """Everything the report reads, already checked."""

    plan: Plan
    runs: list[Run]
    missing: list[str] = field(default_factory=list)  # planned <mode>-s<seed> runs without an eval file
    worst_mixes: dict[str, np.ndarray] | None = None
    figures: dict[Path, bytes | None] = field(default_factory=dict)  # STAGE_FIGURES paths -> PNG bytes
    validation: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    layers_as_trained: dict[str, Any] | None = None  # the perturbation set on the mixes training makes
    gan: dict[str, Any] | None = None
    lock: dict[str, Any] | None = None  # dvc.lock's stages of this plan

    @property
    def class_names(self) -> list[str]:
        """The class names as the evaluations wrote them: the '<class>/<attribute>=<value>' group names, in order."""
        names: list[str] = []
        for run in self.runs:
            for group in run.splits.get("test_balanced", {}).get("group_acc", {}):
                name = group.split("/", 1)[0]
                if name not in names:
                    names.append(name)
            if names:
                break
        return names


# The stages before the report. Not the report itself: DVC writes its dvc.lock entry after it renders, so the page
# would show the previous run's entry.
UPSTREAM_STAGES = ("prepare", "validate", "pool", "probe", "train-gan", "train-encoder", "extract", "invert-pool",
                   "analyze-layers", "worst-mixes")


def collect(root: Path, plan: Plan, allow_missing: bool = False) -> Inputs:
    """Read and check the inputs; the planned eval files are required (unless `allow_missing`), the rest noted."""
    root = Path(root)
    runs = read_runs(root, plan.runs)
    missing = sorted(f"{m}-s{s}" for m, s in plan.runs - {(r.mode, r.seed) for r in runs})
    if missing and not allow_missing:
        raise ReportError(f"{root / EVAL_METRICS}: no eval file for the planned run(s) {', '.join(missing)} "
                          "(train.modes and dfr.bases x train.seeds); run `dvc repro`, or `advmix report "
                          "--allow-missing` for a partial report")
    validation = read_json(validation_metrics(root))
    if validation is not None and not isinstance(validation.get("success"), bool):
        raise ReportError(f"{validation_metrics(root)}: expected a JSON object with a boolean `success`")
    lock = read_lock(root / DVC_LOCK)
    return Inputs(plan=plan, runs=runs, missing=missing, worst_mixes=read_worst_mixes(root / WORST_MIXES),
                  figures={path: read_png(root / path) for _, path, _ in STAGE_FIGURES}, validation=validation,
                  layers=read_json(root / LAYERS_METRICS), layers_as_trained=read_json(root / LAYERS_AS_TRAINED),
                  gan=read_json(root / GAN_METRICS),
                  lock=None if lock is None else {k: v for k, v in lock.items() if k in plan.stages})


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None for a missing file."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_runs(root: Path, planned: frozenset[tuple[str, int]]) -> list[Run]:
    """The metrics/eval/<mode>-s<seed>.json of every planned run, with its by_group.csv.

    Files of runs the params do not plan are left out: a DVC experiment that trains fewer modes still holds the
    committed metrics of the others in its workspace, and they must not enter its report.
    """
    folder = root / EVAL_METRICS
    named = {p: EVAL_NAME.fullmatch(p.name) for p in sorted(folder.glob("*.json"))}
    paths = [p for p, name in named.items() if name and (name["mode"], int(name["seed"])) in planned]
    if not paths:
        raise FileNotFoundError(f"{folder}: no <mode>-s<seed>.json files of the planned runs; run the evaluate "
                                "stages first")
    runs = [read_run(p) for p in paths]
    for run in runs:
        run.by_group = read_by_group(root / eval_by_group(run.mode, run.seed))
        for split, worst in worst_class_acc(run.by_group).items():
            if split in run.splits:
                run.splits[split]["worst_class_acc"] = worst
    return sorted(runs, key=lambda r: (mode_rank(r.mode), r.seed))


def worst_class_acc(by_group: pd.DataFrame | None) -> dict[str, float]:
    """Per split, the accuracy of the class the model gets most wrong (its groups '<class>/...' pooled by size)."""
    if by_group is None:
        return {}
    frame = by_group.assign(cls=by_group["group"].astype(str).str.split("/").str[0],
                            right=by_group["acc"] * by_group["n"])
    totals = frame.groupby(["split", "cls"])[["right", "n"]].sum()
    return (totals["right"] / totals["n"]).groupby(level="split").min().astype(float).to_dict()


def read_run(path: Path) -> Run:
    """One eval json: {"eval_<mode>_s<seed>": EvalResult} (advmix/results.py), named <mode>-s<seed>.json."""
    try:
        result = parse(json.loads(path.read_text()), path)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None
    except EvalFileError as exc:
        raise ReportError(str(exc)) from None
    name = EVAL_NAME.fullmatch(path.name)
    if (result.mode, result.seed) != (name["mode"], int(name["seed"])):
        raise ReportError(f"{path}: holds mode {result.mode!r} seed {result.seed!r}, but its name says "
                          f"{name['mode']!r} seed {name['seed']}")
    if not result.splits:
        raise ReportError(f"{path}: splits: empty; rerun its `advmix evaluate`")
    return Run(result=result, path=path, splits={k: m.model_dump() for k, m in result.splits.items()})


def read_by_group(path: Path) -> pd.DataFrame | None:
    """The per-group table of one run, or None when that run wrote none."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReportError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in BY_GROUP_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}; expected {', '.join(BY_GROUP_COLUMNS)}")
    return frame


def read_worst_mixes(path: Path) -> dict[str, np.ndarray] | None:
    """The worst-mixes stage's arrays: clean and mixed images, labels and each classifier's predictions."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a readable .npz ({exc})") from None
    missing = [k for k in WORST_MIXES_KEYS if k not in arrays]
    if missing:
        raise ReportError(f"{path}: missing array(s) {missing}; expected {list(WORST_MIXES_KEYS)} and pred_<mode>")
    clean, mixed = arrays["clean"], arrays["mixed"]
    if clean.dtype != np.uint8 or clean.ndim != 4 or clean.shape[-1] != 3 or mixed.shape != clean.shape \
            or mixed.dtype != np.uint8 or len(clean) == 0:
        raise ReportError(f"{path}: expected clean and mixed uint8 N x H x W x 3 of one shape, N > 0, got "
                          f"{clean.dtype} {clean.shape} and {mixed.dtype} {mixed.shape}")
    for key in ("label", *(k for k in arrays if k.startswith("pred_"))):
        if arrays[key].shape != (len(clean),):
            raise ReportError(f"{path}: {key} should have shape ({len(clean)},), got {arrays[key].shape}")
    return arrays


def read_png(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ReportError(f"{path}: not a PNG file")
    return data


def read_lock(path: Path) -> dict[str, Any] | None:
    """dvc.lock's stages, or None before the first `dvc repro`."""
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages", {}), dict):
        raise ReportError(f"{path}: expected a mapping with a `stages` mapping")
    return raw.get("stages", {})


def mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


def is_number(value: Any) -> bool:
    """A finite int or float: a NaN or an infinity is no metric."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
