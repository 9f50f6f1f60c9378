"""One evaluation result: the schema that `evaluate` writes and `report` reads, and the metrics the report shows.

metrics/eval/<mode>-s<seed>.json holds {"eval_<mode>_s<seed>": EvalResult}. Both sides go through this module:
evaluate validates what it writes (a NaN is refused before it reaches a file), report validates what it reads
(a file from an older advmix or edited by hand is named, not half-read).

`METRICS` lists the figures of a run the report compares, each with its label and its direction; the report's
columns and summary.json's per-mode entries derive from it. PGD has one column per epsilon the runs were
attacked at, so changing `evaluate.linf_epsilons` changes the columns rather than emptying them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from advmix.modes import SELECTION_RULES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SplitMetrics(_Strict):
    """Clean metrics of one split (advmix.metrics.split_metrics)."""

    acc: float
    error: float
    n: int
    worst_group_acc: float
    avg_acc_train_weighted: float  # group accuracies weighted by the train split's group proportions
    ece: float
    group_acc: dict[str, float]
    eod: float | None = None  # fairlearn's gaps w.r.t. the spurious attribute: two-class tasks only
    dpd: float | None = None
    deo: float | None = None


class Selected(_Strict):
    """The epoch a selection rule kept; for the rules other than the default, that epoch's clean metrics."""

    epoch: int | None = None
    splits: dict[str, SplitMetrics] | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None}


class EvalResult(_Strict):
    """Everything `advmix evaluate` measures of one run (a mode or a DFR refit, and a seed)."""

    mode: str
    seed: int
    uses_group_labels: bool
    group_labels_read: Literal["none", "train", "val"]  # in training: Group DRO train's, a DFR refit val's
    splits: dict[str, SplitMetrics]
    # the attacks, on a group-stratified subset of test_balanced (absent for a DFR refit: it is measured clean)
    robust_images: int | None = None
    robust_clean_acc: float | None = None
    semantic_robust_acc: float | None = None  # AdvMix at evaluation strength; None without a generator
    mix_change_error: float | None = None  # share of random mixes whose prediction changes; lower is better
    pgd_robust_acc: dict[str, float] = {}  # pixel l-inf PGD, per epsilon (its label, e.g. "8/255")
    # the label-free selection figure on val (evaluate.val_robust_images; absent when 0)
    val_robust_images: int | None = None
    val_semantic_robust_acc: float | None = None
    val_mix_change_error: float | None = None
    selection: dict[str, Selected] = {}  # per rule of advmix.modes.SELECTION_RULES
    torch_threads: int | None = None  # CPU results are bitwise reproducible at the same thread count

    def to_json(self) -> dict:
        """The file's entry: figures a run was not measured on are left out (a DFR refit's attacks, the val figure
        at evaluate.val_robust_images 0); a split's two-class gaps stay, as null, for ten classes."""
        out = {k: v for k, v in self.model_dump(mode="json").items() if v is not None and v != {}}
        if self.selection:
            out["selection"] = {rule: entry.to_json() for rule, entry in self.selection.items()}
        return out

    @field_validator("selection")
    @classmethod
    def _known_rules(cls, selection: dict[str, Selected]) -> dict[str, Selected]:
        unknown = sorted(set(selection) - set(SELECTION_RULES))
        if unknown:
            raise ValueError(f"unknown selection rule(s) {unknown}, expected {list(SELECTION_RULES)}")
        return selection


@dataclass(frozen=True)
class Metric:
    """A figure of a run: read from `split` (a SplitMetrics field) or, when split is None, from the run itself."""

    key: str
    label: str
    higher_is_better: bool
    split: str | None = None
    entry: str | None = None  # a key inside a per-entry figure (pgd_robust_acc's epsilon)


def pgd_metric(epsilon: str) -> Metric:
    return Metric("pgd_robust_acc", f"PGD acc {epsilon}", True, entry=epsilon)


# the comparison's columns, in order; PGD's are inserted per epsilon (metrics_of)
METRICS: tuple[Metric, ...] = (
    Metric("error", "test_balanced error", False, "test_balanced"),
    Metric("worst_group_acc", "worst-group acc (balanced)", True, "test_balanced"),
    Metric("error", "test_flipped error", False, "test_flipped"),
    Metric("eod", "EOD (balanced)", False, "test_balanced"),
    Metric("dpd", "DPD (balanced)", False, "test_balanced"),
    Metric("ece", "ECE (balanced)", False, "test_balanced"),
    Metric("semantic_robust_acc", "semantic robust acc", True),
    Metric("mix_change_error", "mix change error", False),
    Metric("val_semantic_robust_acc", "val robust acc (selection)", True),
)
SPLIT_KEYS = ("error", "worst_group_acc", "eod", "dpd", "ece")  # summarised per split in summary.json
PGD_AFTER = "mix_change_error"  # the PGD columns follow this one


def epsilon_label(epsilon: float) -> str:
    """'8/255' for 8/255 (pixel units in [0, 1]); other values as they are, e.g. '0.01'."""
    k = epsilon * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{epsilon:g}"


def metrics_of(results: list[EvalResult]) -> list[Metric]:
    """METRICS with one PGD column per epsilon any of `results` holds, in increasing epsilon."""
    epsilons = sorted({e for r in results for e in r.pgd_robust_acc}, key=_epsilon_value)
    out: list[Metric] = []
    for m in METRICS:
        out.append(m)
        if m.key == PGD_AFTER:
            out += [pgd_metric(e) for e in epsilons]
    return out


def value(result: EvalResult, metric: Metric) -> float | None:
    """`metric` of one run; None where the run has no such figure (a split it lacks, a two-class gap)."""
    if metric.split is not None:
        split = result.splits.get(metric.split)
        return None if split is None else getattr(split, metric.key)
    figure = getattr(result, metric.key)
    return figure.get(metric.entry) if metric.entry is not None else figure


def _epsilon_value(label: str) -> float:
    num, _, den = label.partition("/")
    try:
        return float(num) / float(den or 1)
    except ValueError:
        return float("inf")


class EvalFileError(ValueError):
    """An eval file that is not an EvalResult; the message names the file and the first bad field."""


def describe(exc: ValidationError) -> str:
    """The first error of a validation, one line: 'splits.val.ece: input should be a finite number'."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{key}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg'].lower()}{more}"


LEGACY_PGD = re.compile(r"linf_robust_acc_(\d+)")  # before the schema: one key per epsilon, in 1/255 units


def upgrade(entry: dict) -> dict:
    """An entry written before this schema (advmix of 2026-12-03 and earlier) in its terms: PGD's per-epsilon keys
    linf_robust_acc_<k> become pgd_robust_acc["<k>/255"]. Anything else is left for the schema to judge."""
    legacy = {k: v for k, v in entry.items() if LEGACY_PGD.fullmatch(k)}
    if not legacy or "pgd_robust_acc" in entry:
        return entry
    kept = {k: v for k, v in entry.items() if k not in legacy}
    return kept | {"pgd_robust_acc": {f"{LEGACY_PGD.fullmatch(k)[1]}/255": v for k, v in legacy.items()}}


def entry_key(name: str) -> str:
    """The JSON key of a run's entry: eval_<mode>_s<seed> for run name <mode>-s<seed>."""
    return f"eval_{name.replace('-', '_')}"


def parse(raw: object, path: Path) -> EvalResult:
    """An eval file's content ({entry_key: EvalResult}) as an EvalResult, or EvalFileError naming what is wrong."""
    if not (isinstance(raw, dict) and len(raw) == 1 and isinstance(next(iter(raw.values())), dict)):
        raise EvalFileError(f"{path}: expected {{\"eval_<mode>_s<seed>\": {{\"mode\", \"seed\", \"splits\", ...}}}}")
    try:
        return EvalResult.model_validate(upgrade(next(iter(raw.values()))))
    except ValidationError as exc:
        raise EvalFileError(f"{path}: {describe(exc)}; rerun its `advmix evaluate` (an eval file of an older "
                            "advmix or an edited one)") from None
