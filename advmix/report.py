"""The report: every stage's results on one page, as reports/summary.md, reports/summary.html and metrics/summary.json.

The HTML is self-contained (images as data URIs, inline CSS, no script) so it can be archived or mailed and
still render offline; the Markdown references the PNGs beside it so it reads well in a repository browser.
summary.json carries the headline numbers (means over seeds) for `dvc metrics diff` and for tests.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from advmix import results
from advmix.figures import save_figure
from advmix.files import atomic_folder, atomic_write_bytes, atomic_write_json
from advmix.modes import NAMES as MODE_NAMES
from advmix.modes import SELECTION_RULES, dfr_run
from advmix.params import SPLITS, DataParams, DFRParams, TrainParams
from advmix.paths import (
    DVC_LOCK,
    EVAL_METRICS,
    EVAL_RESULTS,
    GAN_METRICS,
    GAN_MIXING,
    GAN_SAMPLES,
    INVERSION_FIGURE,
    LAYERS_FIGURE,
    LAYERS_METRICS,
    PARAMS,
    REPORTS,
    SUMMARY_BY_GROUP,
    SUMMARY_DIR,
    SUMMARY_HTML,
    SUMMARY_MD,
    SUMMARY_METRICS,
    SUMMARY_WORST_MIXES,
    SWEEP_FIGURE,
    WORST_MIXES,
    dataset_info,
    eval_by_group,
    validation_metrics,
)
from advmix.results import SPLIT_KEYS, EvalFileError, EvalResult, Metric, metrics_of, parse

MODE_ORDER = (*MODE_NAMES, *(dfr_run(m) for m in MODE_NAMES))  # advmix/modes.py; DFR refits last
RULE_TEXT = {  # what each selection rule keeps and which labels it reads (advmix/train.py)
    "label_free": "the epoch of best val accuracy; reads no group label (the default: the attacks measure it)",
    "val_worst_group": "the epoch of best val worst-group accuracy, val accuracy breaking ties; reads the group "
                       "labels of val (a DFR refit: of the base's epoch by that rule)",
}
SELECTION_FIGURES = (("test_iid", "acc"), ("test_balanced", "error"), ("test_balanced", "worst_group_acc"))
BY_GROUP_COLUMNS = ("split", "group", "n", "acc")
WORST_MIXES_KEYS = ("clean", "mixed", "label", "pred_nominal", "pred_advmix")
WORST_MIXES_SHOWN = 8
EXTERNAL_FIGURES = (  # (caption, path): drawn by earlier stages, embedded when present
    ("Which W+ layers carry what (analyze-layers)", LAYERS_FIGURE),
    ("GAN samples", GAN_SAMPLES),
    ("GAN style mixing", GAN_MIXING),
    ("W+ inversion of real images", INVERSION_FIGURE),
    ("Sweep", SWEEP_FIGURE),
)
EVAL_NAME = re.compile(r"(?P<mode>.+)-s(?P<seed>\d+)\.json")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportError(ValueError):
    """A report input that cannot be read; the message names the file and what was expected."""


@dataclass
class Run:
    """One evaluated (mode, seed): its eval file, with the split metrics as plain dicts (a selection rule other
    than the default swaps in its own, rule_runs)."""

    result: EvalResult
    path: Path
    splits: dict[str, dict[str, Any]]
    by_group: Any = None  # pandas DataFrame of results/eval/<mode>-s<seed>/by_group.csv, or None

    @property
    def mode(self) -> str:
        return self.result.mode

    @property
    def seed(self) -> int:
        return self.result.seed

    @property
    def uses_group_labels(self) -> bool:
        return self.result.uses_group_labels

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


@dataclass
class Inputs:
    """Everything the report reads, already checked."""

    root: Path
    dataset: str
    rho: float
    params_text: str
    runs: list[Run]
    missing: list[str] = field(default_factory=list)  # planned <mode>-s<seed> runs without an eval file (--allow-missing)
    class_names: list[str] | None = None
    worst_mixes: dict[str, Any] | None = None
    worst_mixes_path: Path | None = None
    images: dict[Path, bytes | None] = field(default_factory=dict)  # EXTERNAL_FIGURES paths -> PNG bytes
    validation: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    gan: dict[str, Any] | None = None
    lock: dict[str, Any] | None = None


@dataclass
class Figure:
    """One image of the report: bytes to embed in the HTML, a path for the Markdown, or why it is missing."""

    caption: str
    md_path: str  # relative to reports/, where summary.md lives
    data: bytes | None
    note: str = ""


def build_report(root: Path, class_names: list[str] | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """Read every input, then render everything in memory, then write: a failed render leaves the old outputs.

    Every run that train.modes x train.seeds plans must have its eval file; `allow_missing` makes a partial report
    instead, which says so in its title and in summary.json (`missing_runs`)."""
    root = Path(root)
    inputs = collect(root, class_names, allow_missing)
    summary = summarize(inputs.runs, inputs.dataset, inputs.rho) | {"layers": layers_summary(inputs.layers),
                                                                    "missing_runs": inputs.missing}
    with atomic_folder(root / SUMMARY_DIR) as folder:
        figures = make_figures(inputs, folder)
        blocks = report_blocks(summary, inputs, figures)
        markdown = render_markdown(blocks)
        page = render_html(blocks, title=_title(summary))
    atomic_write_json(root / SUMMARY_METRICS, summary)
    atomic_write_bytes(root / SUMMARY_MD, markdown.encode())
    atomic_write_bytes(root / SUMMARY_HTML, page.encode())
    return summary


# ---------------------------------------------------------------- reading


def collect(root: Path, class_names: list[str] | None = None, allow_missing: bool = False) -> Inputs:
    """Read and check the inputs; required ones (params.yaml, eval jsons) raise when missing, others are noted."""
    root = Path(root)
    dataset, rho, params_text, planned = read_params(root / PARAMS)
    runs = read_runs(root, planned)
    missing = sorted(f"{m}-s{s}" for m, s in planned - {(r.mode, r.seed) for r in runs})
    if missing and not allow_missing:
        raise ReportError(f"{root / EVAL_METRICS}: no eval file for the planned run(s) {', '.join(missing)} "
                          "(train.modes and dfr.bases x train.seeds); run `dvc repro`, or `advmix report --allow-missing` for a "
                          "partial report")
    if class_names is None:
        class_names = _dataset_classes(dataset_info(dataset, root))
    inputs = Inputs(root=root, dataset=dataset, rho=rho, params_text=params_text, runs=runs, missing=missing,
                    class_names=class_names)
    found = read_worst_mixes(root)
    if found is not None:
        inputs.worst_mixes_path, inputs.worst_mixes = found
    inputs.images = {path: read_png(root / path) for _, path in EXTERNAL_FIGURES}
    inputs.validation = read_json(validation_metrics(root), required=False)
    if inputs.validation is not None:
        _check_validation(inputs.validation, validation_metrics(root))
    inputs.layers = read_json(root / LAYERS_METRICS, required=False)
    inputs.gan = read_json(root / GAN_METRICS, required=False)
    inputs.lock = read_lock(root / DVC_LOCK)
    return inputs


def read_json(path: Path, required: bool = True) -> Any:
    """Parsed JSON; None for a missing optional file."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: missing")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None


def read_params(path: Path) -> tuple[str, float, str, set[tuple[str, int]]]:
    """data.name, data.rho, the (mode, seed) runs that train.modes x train.seeds and dfr.bases x train.seeds plan
    (defaults where absent), and the file's text, to embed verbatim.

    Read as plain YAML rather than through load_params so a params.yaml that gained a section the report does
    not know still renders.
    """
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the report reads data.name and data.rho from it")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({exc})") from None
    data = raw.get("data", {}) if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a mapping with a `data` section")
    defaults = DataParams()
    name, rho = data.get("name", defaults.name), data.get("rho", defaults.rho)
    if not isinstance(name, str) or not _is_number(rho):
        raise ReportError(f"{path}: expected data.name a string and data.rho a number, got {name!r} and {rho!r}")
    train = raw.get("train", {}) or {}
    modes, seeds = train.get("modes", TrainParams().modes), train.get("seeds", TrainParams().seeds)
    if not (isinstance(modes, list) and isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
        raise ReportError(f"{path}: expected train.modes a list of names and train.seeds a list of integers, "
                          f"got {modes!r} and {seeds!r}")
    dfr = raw.get("dfr", {}) or {}
    bases = dfr.get("bases", [b for b in DFRParams().bases if b in modes]) if isinstance(dfr, dict) else None
    if not isinstance(bases, list):
        raise ReportError(f"{path}: expected dfr.bases a list of mode names, got {bases!r}")
    runs = [str(m) for m in modes] + [dfr_run(str(b)) for b in bases]
    return name, float(rho), text, {(r, s) for r in runs for s in seeds}


def read_runs(root: Path, planned: set[tuple[str, int]] | None = None) -> list[Run]:
    """Every metrics/eval/<mode>-s<seed>.json of a planned run (all when `planned` is None), with its by_group.csv.

    Files of runs the params no longer plan are left out: a DVC experiment that trains fewer modes still holds
    the committed metrics of the others in its workspace, and they must not enter its report.
    """
    folder = root / EVAL_METRICS
    paths = sorted(p for p in folder.glob("*.json") if EVAL_NAME.fullmatch(p.name))
    if planned is not None:
        named = {p: EVAL_NAME.fullmatch(p.name) for p in paths}
        paths = [p for p, name in named.items() if (name["mode"], int(name["seed"])) in planned]
    if not paths:
        raise FileNotFoundError(f"{folder}: no <mode>-s<seed>.json files of the planned runs; run the evaluate "
                                "stages first")
    runs = [read_run(p) for p in paths]
    seen: dict[tuple[str, int], Path] = {}
    for run in runs:
        if (run.mode, run.seed) in seen:
            raise ReportError(f"{run.path}: mode {run.mode} seed {run.seed} is also in {seen[run.mode, run.seed]}")
        seen[run.mode, run.seed] = run.path
    for run in runs:
        run.by_group = read_by_group(root / eval_by_group(run.mode, run.seed))
    return sorted(runs, key=lambda r: (_mode_rank(r.mode), r.seed))


def read_run(path: Path) -> Run:
    """One eval json: {"eval_<mode>_s<seed>": EvalResult} (advmix/results.py), named <mode>-s<seed>.json."""
    try:
        result = parse(read_json(path), path)
    except EvalFileError as exc:
        raise ReportError(str(exc)) from None
    name = EVAL_NAME.fullmatch(path.name)
    if (result.mode, result.seed) != (name["mode"], int(name["seed"])):
        raise ReportError(f"{path}: holds mode {result.mode!r} seed {result.seed!r}, but its name says "
                          f"{name['mode']!r} seed {name['seed']}")
    if not result.splits:
        raise ReportError(f"{path}: splits: empty; rerun its `advmix evaluate`")
    return Run(result=result, path=path, splits={k: m.model_dump() for k, m in result.splits.items()})


def read_by_group(path: Path) -> Any:
    """The per-group table of one run, or None when that run wrote none."""
    import pandas as pd

    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReportError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in BY_GROUP_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}; expected split, group, n, acc, selection_rate, tpr")
    return frame


def read_worst_mixes(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The AdvMix mixes that fool the nominal model most (written by `advmix report` before the report)."""
    import numpy as np

    path = root / WORST_MIXES
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a readable .npz ({exc})") from None
    missing = [k for k in WORST_MIXES_KEYS if k not in arrays]
    if missing:
        raise ReportError(f"{path}: missing array(s) {missing}; expected {list(WORST_MIXES_KEYS)}")
    clean, mixed = arrays["clean"], arrays["mixed"]
    if clean.dtype != np.uint8 or clean.ndim != 4 or clean.shape[-1] != 3 or mixed.shape != clean.shape \
            or mixed.dtype != np.uint8 or len(clean) == 0:
        raise ReportError(f"{path}: expected clean and mixed uint8 N x H x W x 3 of one shape, N > 0, got "
                         f"{clean.dtype} {clean.shape} and {mixed.dtype} {mixed.shape}")
    for key in ("label", "pred_nominal", "pred_advmix"):
        if arrays[key].shape != (len(clean),):
            raise ReportError(f"{path}: {key} should have shape ({len(clean)},), got {arrays[key].shape}")
    return path, arrays


def read_png(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ReportError(f"{path}: not a PNG file")
    return data


def read_lock(path: Path) -> dict[str, Any] | None:
    """dvc.lock's stages, or None before the first `dvc repro`."""
    import yaml

    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages", {}), dict):
        raise ReportError(f"{path}: expected a mapping with a `stages` mapping")
    return raw.get("stages", {})


def _check_validation(obj: Any, path: Path) -> None:
    if not isinstance(obj, dict) or not isinstance(obj.get("success"), bool):
        raise ReportError(f"{path}: expected a JSON object with a boolean `success`")


def _dataset_classes(path: Path) -> list[str] | None:
    """Class names from the dataset's info.json, when the dataset is there (the report does not need it)."""
    try:
        classes = json.loads(path.read_text()).get("classes")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(c) for c in classes] if isinstance(classes, list) else None


# ---------------------------------------------------------------- numbers


def layers_summary(layers: dict[str, Any] | None) -> dict[str, Any] | None:
    """The mixing rows and what they do to real faces, from metrics/layers.json's `perturbation` (None without)."""
    perturbation = (layers or {}).get("perturbation")
    real = perturbation.get("real") if isinstance(perturbation, dict) else None
    if not isinstance(real, dict):
        return None
    return {"layers": perturbation["layers"], "spurious": perturbation["spurious"], "partners": real["partners"],
            "measured_on": perturbation.get("measured_on", "every pair"), "pairs": real["n"],
            "label_change": real["label_change"], "spurious_transfer": real["spurious_transfer"]}


def summarize(runs: list[Run], dataset: str, rho: float) -> dict[str, Any]:
    """summary.json: per mode and split the mean (and std) over seeds, and AdvMix against nominal."""
    modes: dict[str, Any] = {}
    for mode, group in by_mode(runs).items():
        entry: dict[str, Any] = {}
        for split in _splits(group):
            entry[split] = {}
            for key in SPLIT_KEYS:
                mean, std = mean_std(_split_values(group, split, key))
                entry[split][key] = mean
                entry[split][f"{key}_std"] = std
        for metric in run_metrics(runs):  # run-level figures; PGD nested per epsilon
            mean = mean_std(_values(group, metric))[0]
            if metric.entry is None:
                entry[metric.key] = mean
            else:
                entry.setdefault(metric.key, {})[metric.entry] = mean
        entry["uses_group_labels"] = any(r.uses_group_labels for r in group)
        entry["seeds"] = sorted(r.seed for r in group)
        modes[mode] = entry
    wga = {m: modes.get(m, {}).get("test_balanced", {}).get("worst_group_acc") for m in ("nominal", "advmix")}
    grouped = by_mode(runs)
    return {
        "dataset": dataset,
        "rho": rho,
        "modes": modes,
        "advmix_vs_nominal": {
            "relative_error_reduction_balanced": relative_error_reduction(modes, "advmix"),
            "worst_group_gain": None if None in wga.values() else wga["advmix"] - wga["nominal"],
            **paired_gain(grouped.get("nominal", []), grouped.get("advmix", [])),
        },
        "vs_nominal": {m: paired_gain(grouped["nominal"], g) for m, g in grouped.items()
                       if m != "nominal" and "nominal" in grouped},
        "selection": selection_summary(runs),
        "ci_method": CI_METHOD,
    }


def rule_runs(runs: list[Run], rule: str) -> list[Run]:
    """The runs as `rule` selects them: the default rule's are the runs; another's swap in its clean metrics
    (runs without that rule's weights are left out)."""
    if rule == SELECTION_RULES[0]:
        return runs
    return [replace(r, splits=r.selection[rule]["splits"]) for r in runs if "splits" in r.selection.get(rule, {})]


def selection_summary(runs: list[Run]) -> dict[str, Any]:
    """summary.json's `selection`: every mode under every rule, with the labels each read, per seed and against
    nominal under the same rule."""
    out: dict[str, Any] = {"rules": RULE_TEXT, "modes": {}}
    for rule in SELECTION_RULES:
        grouped = by_mode(rule_runs(runs, rule))
        for mode, group in grouped.items():
            entry = out["modes"].setdefault(mode, {"group_labels_in_training": group[0].group_labels_read})
            figures: dict[str, Any] = {"seeds": [r.seed for r in group],
                                       "epochs": [r.selection.get(rule, {}).get("epoch") for r in group]}
            for split, key in SELECTION_FIGURES:
                values = [r.splits.get(split, {}).get(key) for r in group]
                figures[f"{split}_{key}"], figures[f"{split}_{key}_std"] = mean_std([v for v in values if v is not None])
                figures[f"{split}_{key}_per_seed"] = values
            if mode != "nominal" and "nominal" in grouped:
                figures["vs_nominal"] = paired_gain(grouped["nominal"], group)
            entry[rule] = figures
    return out


CI_METHOD = ("seed-paired percentile bootstrap, 10,000 resamples of the seeds both modes share (a resample keeps "
             "each seed's pair together), 95%: relative test_balanced error reduction of the seed means, and "
             "the gain in mean worst-group accuracy on test_balanced")


def paired_gain(nominal: list[Run], other: list[Run]) -> dict[str, Any]:
    """The seed-paired bootstrap CI of `other` against nominal on test_balanced; None values with < 2 seeds."""
    from advmix.stats import paired_bootstrap

    def at(runs: list[Run], key: str) -> dict[int, float]:
        return {r.seed: float(r.splits["test_balanced"][key]) for r in runs
                if r.splits.get("test_balanced", {}).get(key) is not None}

    e0, e1, w0, w1 = at(nominal, "error"), at(other, "error"), at(nominal, "worst_group_acc"), at(other,
                                                                                                 "worst_group_acc")
    seeds = sorted(set(e0) & set(e1) & set(w0) & set(w1))
    if len(seeds) < 2:
        return {"paired_seeds": seeds, "relative_error_reduction_ci": None, "worst_group_gain_ci": None}
    g = paired_bootstrap(seeds, [e0[s] for s in seeds], [e1[s] for s in seeds], [w0[s] for s in seeds],
                         [w1[s] for s in seeds])
    return {"paired_seeds": seeds, "relative_error_reduction": g.relative_error_reduction,
            "relative_error_reduction_ci": list(g.relative_error_reduction_ci),
            "worst_group_gain": g.worst_group_gain, "worst_group_gain_ci": list(g.worst_group_gain_ci)}


def relative_error_reduction(modes: dict[str, Any], mode: str) -> float | None:
    """(err_nominal - err_mode) / err_nominal on test_balanced; None when undefined."""
    nominal = modes.get("nominal", {}).get("test_balanced", {}).get("error")
    other = modes.get(mode, {}).get("test_balanced", {}).get("error")
    if nominal is None or other is None or nominal == 0:
        return None
    return (nominal - other) / nominal


def by_mode(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by mode, modes in report order."""
    out: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (_mode_rank(r.mode), r.seed)):
        out.setdefault(run.mode, []).append(run)
    return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std over seeds; std is None for one seed (it says nothing about spread)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _values(runs: list[Run], metric: Metric) -> list[float]:
    """One figure of each run, nulls dropped."""
    return [float(v) for v in (r.figure(metric) for r in runs) if v is not None]


def _split_values(runs: list[Run], split: str, key: str) -> list[float]:
    """The split metric `key` of each run that has `split`, nulls dropped."""
    return [float(v) for v in (r.splits[split].get(key) for r in runs if split in r.splits) if v is not None]


def run_metrics(runs: list[Run]) -> list[Metric]:
    """The run-level figures of the comparison (results.METRICS; PGD per epsilon the runs hold)."""
    return [m for m in metrics_of([r.result for r in runs]) if m.split is None]


def _splits(runs: list[Run]) -> list[str]:
    names = {s for r in runs for s in r.splits}
    return [s for s in SPLITS if s in names] + sorted(names - set(SPLITS))


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


def _is_number(value: Any) -> bool:
    """A finite int or float: a NaN or an infinity is no metric."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- figures


def make_figures(inputs: Inputs, folder: Path) -> list[Figure]:
    """Draw the report's own PNGs into `folder` (reports/summary/) and gather the earlier stages' ones."""
    md_folder = SUMMARY_DIR.relative_to(REPORTS).as_posix()
    figures = []
    fig = plot_by_group(inputs.runs)
    caption = "Accuracy per group on test_balanced (mean over seeds)"
    if fig is None:
        figures.append(Figure(caption, "", None, "no by_group.csv with test_balanced rows under "
                                                  f"{EVAL_RESULTS.as_posix()}/<mode>-s<seed>/"))
    else:
        figures.append(_saved(fig, folder / SUMMARY_BY_GROUP.name, caption, f"{md_folder}/{SUMMARY_BY_GROUP.name}"))
    caption = "Worst AdvMix mixes against the nominal model (captions: label / nominal / advmix prediction)"
    if inputs.worst_mixes is None:
        figures.append(Figure(caption, "", None, f"no {WORST_MIXES.as_posix()} (needs the nominal and advmix "
                                                  "classifiers of `seed` and the generator)"))
    else:
        fig = plot_worst_mixes(inputs.worst_mixes, inputs.class_names)
        figures.append(_saved(fig, folder / SUMMARY_WORST_MIXES.name, caption,
                              f"{md_folder}/{SUMMARY_WORST_MIXES.name}"))
    for caption, path in EXTERNAL_FIGURES:
        data = inputs.images.get(path)
        figures.append(Figure(caption, path.relative_to(REPORTS).as_posix(), data,
                              "" if data else f"{path.as_posix()} not present"))
    return figures


def _saved(fig: Any, path: Path, caption: str, md_path: str) -> Figure:
    import matplotlib.pyplot as plt

    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return Figure(caption, md_path, path.read_bytes())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_by_group(runs: list[Run]) -> Any:
    """One bar per group per mode: where a mode's accuracy comes from, and which group it leaves behind."""
    import numpy as np

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
    plt = _pyplot()
    modes = list(by_mode([r for r in runs if r.mode in table]))
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) + 2), 3.6))
    x = np.arange(len(groups))
    for i, mode in enumerate(modes):
        means = [statistics.fmean(table[mode][g]) if table[mode].get(g) else np.nan for g in groups]
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, label=mode)
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("test_balanced accuracy per group (label / spurious attribute)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_worst_mixes(arrays: dict[str, Any], class_names: list[str] | None) -> Any:
    """Clean images over their worst mixes; a caption per column says what each model predicted on the mix."""
    n = min(len(arrays["clean"]), WORST_MIXES_SHOWN)
    plt = _pyplot()
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 3.8), squeeze=False)

    def name(i: Any) -> str:
        i = int(i)
        return class_names[i] if class_names and 0 <= i < len(class_names) else str(i)

    for j in range(n):
        for row, key in enumerate(("clean", "mixed")):
            ax = axes[row, j]
            ax.imshow(arrays[key][j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        caption = f"{name(arrays['label'][j])}\n{name(arrays['pred_nominal'][j])}\n{name(arrays['pred_advmix'][j])}"
        axes[1, j].set_xlabel(caption, fontsize=7)
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("mixed")
    fig.suptitle("Worst AdvMix mixes vs nominal (under each: label / nominal / advmix)", fontsize=9)
    return fig


# ---------------------------------------------------------------- rendering

# A report is a list of blocks, rendered twice (Markdown, HTML) so the two never disagree:
# ("h", level, text), ("p", text), ("table", headers, rows), ("figure", Figure), ("pre", text).
Block = tuple


def _title(summary: dict[str, Any]) -> str:
    missing = summary.get("missing_runs")
    partial = f" (PARTIAL: {len(missing)} planned runs missing: {', '.join(missing)})" if missing else ""
    return f"advmix report: {summary['dataset']}, rho = {summary['rho']:g}{partial}"


def report_blocks(summary: dict[str, Any], inputs: Inputs, figures: list[Figure]) -> list[Block]:
    """The report, top to bottom."""
    blocks: list[Block] = [
        ("h", 1, _title(summary)),
        ("p", (f"Dataset `{summary['dataset']}`, label/spurious agreement rho = {summary['rho']:g} in train, val "
               "and test_iid. Numbers are means over seeds (± sample std where there are several); lower error and "
               "fairness gaps (EOD, DPD) are better, higher accuracies are better; bold: the best mode of a column.")),
        ("h", 2, "Comparison"),
        ("table", *comparison_table(summary, inputs.runs)),
    ]
    gain = summary["advmix_vs_nominal"]
    if gain["relative_error_reduction_balanced"] is not None:
        blocks.append(("p", (f"AdvMix vs nominal on test_balanced: relative error reduction "
                             f"{gain['relative_error_reduction_balanced']:+.1%}, worst-group accuracy gain "
                             f"{_fmt(gain['worst_group_gain'], signed=True)}.")))
    if summary["vs_nominal"]:
        blocks += [("h", 2, "Against nominal, with confidence intervals"),
                   ("table", *gain_table(summary["vs_nominal"])),
                   ("p", f"Intervals: {summary['ci_method']}. n/a: fewer than two shared seeds.")]
    blocks += [("h", 2, "Model selection rules"), ("table", *selection_table(summary["selection"])),
               ("p", "Rules: " + "; ".join(f"`{r}`: {t}" for r, t in RULE_TEXT.items()) + ". Group labels in "
                "training: `train` = Group DRO, `val` = a DFR refit (its last layer fit on group-balanced val), "
                "`none` = the rest. The val_worst_group rule is measured clean (no attack). Against nominal: "
                "under the same rule, seed-paired as above.")]
    blocks += [("h", 2, "Per seed"), ("table", *per_seed_table(inputs.runs))]
    blocks += [("h", 2, "Figures")]
    for fig in figures:
        blocks += [("h", 3, fig.caption), ("figure", fig)]
    blocks += [("h", 2, "Data validation"), *validation_blocks(inputs.validation)]
    blocks += [("h", 2, "Layer perturbation (analyze-layers)")]
    perturbation = (inputs.layers or {}).get("perturbation")
    blocks.append(("table", ["key", "value"], _flatten(perturbation)) if isinstance(perturbation, dict)
                  else ("p", f"*{LAYERS_METRICS.as_posix()} not present (or has no `perturbation` block).*"))
    blocks += [("h", 2, "GAN")]
    blocks.append(("table", ["key", "value"], _flatten({k: v for k, v in inputs.gan.items()
                                                        if not isinstance(v, dict | list)}))
                  if isinstance(inputs.gan, dict) else ("p", f"*{GAN_METRICS.as_posix()} not present.*"))
    blocks += [("h", 2, "params.yaml"), ("pre", inputs.params_text)]
    blocks += [("h", 2, "Data versions (dvc.lock)")]
    if inputs.lock is None:
        blocks.append(("p", "*dvc.lock not present: these results were not produced by `dvc repro`.*"))
    else:
        blocks.append(("table", ["stage", "kind", "path", "md5"], lock_rows(inputs.lock)))
    return blocks


RESULTS_BEGIN, RESULTS_END = "<!-- results: advmix report --results-doc -->", "<!-- /results -->"


def results_section(summary: dict[str, Any], runs: list[Run]) -> str:
    """The committed default's numbers for docs/results.md, from the same summary and runs as the report:
    test_balanced error per seed, the comparison, and each mode against nominal with its interval."""
    seeds = sorted({r.seed for r in runs})
    per_seed = [[mode, *(_fmt(next((r.splits["test_balanced"]["error"] for r in group if r.seed == s
                                     and "test_balanced" in r.splits), None)) for s in seeds)]
                for mode, group in by_mode(runs).items()]
    blocks: list[Block] = [
        ("p", (f"Dataset `{summary['dataset']}`, rho = {summary['rho']:g}; seeds {', '.join(map(str, seeds))}. "
              "Test_balanced error per seed:")),
        ("table", ["mode", *(f"s{s}" for s in seeds)], per_seed),
        ("p", "Means ± sample std over seeds:"),
        ("table", *comparison_table(summary, runs)),
        ("p", f"Against nominal ({summary['ci_method']}):"),
        ("table", *gain_table(summary["vs_nominal"])),
    ]
    if summary.get("selection"):  # summaries written before the rules existed have none
        blocks += [("p", "Under both model-selection rules (" + "; ".join(f"`{r}`: {t}" for r, t in
                                                                         RULE_TEXT.items()) + "):"),
                   ("table", *selection_table(summary["selection"]))]
    if (layers := summary.get("layers")) is not None:
        blocks.append(("p", (
            f"Mixing rows: W+ {', '.join(map(str, layers['layers']))} (`metrics/layers.json`). On the "
            f"{layers['measured_on']} of the inverted real train faces ({layers['pairs']} pairs, {layers['partners']} "
            f"partner) they change the label in {layers['label_change']:.1%} of mixes and move "
            f"`{layers['spurious']}` in {layers['spurious_transfer']:.1%} of the pairs that differ in it.")))
    return render_markdown(blocks)


def replace_results_section(doc: Path, section: str) -> None:
    """Rewrite the part of `doc` between RESULTS_BEGIN and RESULTS_END (atomically); ReportError without them."""
    text = doc.read_text()
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        raise ReportError(f"{doc}: expected the markers {RESULTS_BEGIN} and {RESULTS_END} around the section")
    head, rest = text.split(RESULTS_BEGIN, 1)
    tail = rest.split(RESULTS_END, 1)[1]
    atomic_write_bytes(doc, f"{head}{RESULTS_BEGIN}\n{section}{RESULTS_END}{tail}".encode())


def comparison_table(summary: dict[str, Any], runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Per mode the mean ± std of every figure of results.METRICS (split ones from summary.json), with the
    relative test_balanced error reduction after the first column; the best mode of each column in bold (by the
    metric's direction)."""
    first, *rest = metrics_of([r.result for r in runs])
    headers = ["mode", first.label, "rel. error reduction vs nominal", *(m.label for m in rest), "group labels"]
    grouped = by_mode(runs)
    cells = {mode: {m: _mean_std(m, entry, grouped[mode]) for m in (first, *rest)}
             for mode, entry in summary["modes"].items()}
    best = {}
    for m in (first, *rest):
        means = [c[m][0] for c in cells.values() if c[m][0] is not None]
        best[m] = (max if m.higher_is_better else min)(means) if len(means) > 1 else None

    def cell(mode: str, m: Metric) -> str:
        mean, std = cells[mode][m]
        text = _fmt(mean, std)
        return f"**{text}**" if mean is not None and mean == best[m] else text

    rows = []
    for mode, entry in summary["modes"].items():
        reduction = relative_error_reduction(summary["modes"], mode)
        rows.append([mode, cell(mode, first),
                     "n/a" if reduction is None else ("(reference)" if mode == "nominal" else f"{reduction:+.1%}"),
                     *(cell(mode, m) for m in rest), "yes" if entry["uses_group_labels"] else "no"])
    return headers, rows


def _mean_std(metric: Metric, entry: dict[str, Any], runs: list[Run]) -> tuple[float | None, float | None]:
    """A mode's mean and std of `metric`: a split metric from its summary.json entry, a run-level one from the
    runs."""
    if metric.split is None:
        return mean_std(_values(runs, metric))
    split = entry.get(metric.split, {})
    return split.get(metric.key), split.get(f"{metric.key}_std")


def gain_table(vs_nominal: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["mode", "seeds", "rel. test_balanced error reduction", "95% CI", "worst-group gain", "95% CI"]

    def ci(v: list[float] | None, pct: bool) -> str:
        return "n/a" if v is None else (f"[{v[0]:+.1%}, {v[1]:+.1%}]" if pct else f"[{v[0]:+.3f}, {v[1]:+.3f}]")

    rows = [[mode, ", ".join(map(str, g["paired_seeds"])),
             "n/a" if g.get("relative_error_reduction") is None else f"{g['relative_error_reduction']:+.1%}",
             ci(g["relative_error_reduction_ci"], True),
             "n/a" if g.get("worst_group_gain") is None else f"{g['worst_group_gain']:+.3f}",
             ci(g["worst_group_gain_ci"], False)] for mode, g in vs_nominal.items()]
    return headers, rows


def selection_table(selection: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["mode", "group labels in training", "selection rule", "epochs kept (per seed)", "test_iid acc",
               "test_balanced error", "worst-group acc (balanced)", "worst group per seed",
               "rel. error reduction vs nominal [95% CI]", "worst-group gain [95% CI]"]
    rows = []
    for mode, entry in selection["modes"].items():
        for rule in SELECTION_RULES:
            if rule not in entry:
                continue
            f, g = entry[rule], entry[rule].get("vs_nominal") or {}
            ci = g.get("relative_error_reduction_ci")
            wci = g.get("worst_group_gain_ci")
            rows.append([
                mode, entry["group_labels_in_training"], rule,
                ", ".join("?" if e is None else str(e + 1) for e in f["epochs"]),
                _fmt(f["test_iid_acc"], f["test_iid_acc_std"]),
                _fmt(f["test_balanced_error"], f["test_balanced_error_std"]),
                _fmt(f["test_balanced_worst_group_acc"], f["test_balanced_worst_group_acc_std"]),
                ", ".join(_fmt(v) for v in f["test_balanced_worst_group_acc_per_seed"]),
                "(reference)" if mode == "nominal" else "n/a" if ci is None else
                f"{g['relative_error_reduction']:+.1%} [{ci[0]:+.1%}, {ci[1]:+.1%}]",
                "(reference)" if mode == "nominal" else "n/a" if wci is None else
                f"{g['worst_group_gain']:+.3f} [{wci[0]:+.3f}, {wci[1]:+.3f}]",
            ])
    return headers, rows


def per_seed_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    splits, figures = _splits(runs), run_metrics(runs)
    headers = ["mode", "seed", *(f"{s} error" for s in splits), "worst-group acc (balanced)",
               *(m.label for m in figures)]
    rows = []
    for run in sorted(runs, key=lambda r: (_mode_rank(r.mode), r.seed)):
        rows.append([run.mode, str(run.seed),
                     *(_fmt(run.splits[s]["error"]) if s in run.splits else "n/a" for s in splits),
                     _fmt(run.splits.get("test_balanced", {}).get("worst_group_acc")),
                     *(_fmt(run.figure(m)) for m in figures)])
    return headers, rows


def validation_blocks(validation: dict[str, Any] | None) -> list[Block]:
    if validation is None:
        return [("p", f"*{validation_metrics().as_posix()} not present: the data were not validated.*")]
    failed = validation.get("failed") or []
    verdict = "**passed**" if validation["success"] else "**FAILED**"
    line = f"Great Expectations suites {verdict}: {validation.get('evaluated', '?')} expectations evaluated, " + (
        f"failed: {', '.join(map(str, failed))}." if failed else "none failed.")
    return [("p", line), ("table", ["key", "value"], _flatten(validation))]


def lock_rows(stages: dict[str, Any]) -> list[list[str]]:
    """Each stage's deps and outs with their md5: which code and data produced these numbers."""
    rows = []
    for stage, body in stages.items():
        for kind in ("deps", "outs"):
            for item in (body or {}).get(kind, []) or []:
                if isinstance(item, dict) and "path" in item:
                    rows.append([stage, kind, str(item["path"]), str(item.get("md5") or item.get("hash") or "")])
    return rows


def _flatten(obj: dict[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in obj.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            rows.append([f"{prefix}{key}", ", ".join(_scalar(v) for v in value) or "none"])
        else:
            rows.append([f"{prefix}{key}", _scalar(value)])
    return rows


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt(mean: float | None, std: float | None = None, signed: bool = False) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if std is None else f"{text} ± {std:.3f}"


def render_markdown(blocks: list[Block]) -> str:
    """Markdown for a repository browser; images by path relative to reports/."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"{'#' * block[1]} {block[2]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figure":
            fig = block[1]
            out.append(f"![{fig.caption}]({fig.md_path})" if fig.data else f"*Missing: {fig.note}; skipped.*")
        elif kind == "pre":
            out.append(f"```yaml\n{block[1].rstrip()}\n```")
        else:
            raise AssertionError(f"unknown report block {kind!r}")
    return "\n\n".join(out) + "\n"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
code { background: #f3f3f3; padding: 0 0.2em; } .missing { color: #a33; font-style: italic; }
"""


def render_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: images as data URIs, inline CSS, no script, no external reference."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            fig = block[1]
            if fig.data:
                uri = "data:image/png;base64," + base64.b64encode(fig.data).decode("ascii")
                out.append(f'<img src="{uri}" alt="{html.escape(fig.caption)}">')
            else:
                out.append(f'<p class="missing">Missing: {html.escape(fig.note)}; skipped.</p>')
        elif kind == "pre":
            out.append(f"<pre>{html.escape(block[1].rstrip())}</pre>")
        else:
            raise AssertionError(f"unknown report block {kind!r}")
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(out) + "\n</body>\n</html>\n")


def _inline(text: str) -> str:
    """The little Markdown the blocks use (`code`, **bold**, *italic*) as HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)
