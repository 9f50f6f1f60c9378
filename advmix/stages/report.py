"""report: the comparison of every planned run on one page (advmix/report/): reports/summary.md, a self-contained
reports/summary.html and metrics/summary.json. It reads the evaluations and the earlier stages' outputs only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advmix.stages import StageError

if TYPE_CHECKING:
    from advmix.report.collect import Plan


@dataclass
class Reported:
    summary_json: dict[str, Any]  # metrics/summary.json

    def summary(self) -> str:
        from advmix import paths
        from advmix.report.page import headline

        return f"{paths.SUMMARY_HTML}: {headline(self.summary_json).replace('**', '')}"


@dataclass
class DocsRewritten:
    docs: list[Path]

    def summary(self) -> str:
        from advmix import paths

        return f"{', '.join(map(str, self.docs))}: the generated sections rewritten from {paths.SUMMARY_METRICS}"


# Below either size a run shows that every stage works, not an effect (profiles/quick.yaml, the tests' projects)
SMOKE_TRAIN_IMAGES, SMOKE_GAN_ITERATIONS = 1000, 500


def smoke_reason(p) -> str | None:
    """Why the params make a smoke run, or None."""
    reasons = []
    if p.data.sizes.train < SMOKE_TRAIN_IMAGES:
        reasons.append(f"{p.data.sizes.train} train images")
    if p.gan.pretrained is None and p.gan.iterations < SMOKE_GAN_ITERATIONS:
        reasons.append(f"a GAN of {p.gan.iterations} iterations")
    return ", ".join(reasons) or None


def plan_of(p) -> Plan:
    """The report's plan from loaded params (so `-S` overrides reach it)."""
    import yaml

    from advmix.modes import dfr_run
    from advmix.report.collect import UPSTREAM_STAGES, Plan

    modes, seeds, bases = list(p.train.modes), list(p.train.seeds), list(p.dfr.bases)
    runs = frozenset((r, s) for r in [*modes, *map(dfr_run, bases)] for s in seeds)
    stages = {*UPSTREAM_STAGES, *(f"{kind}@{m}-{s}" for kind in ("train", "evaluate") for m in modes for s in seeds),
              *(f"dfr@{b}-{s}" for b in bases for s in seeds)}
    text = yaml.safe_dump(p.to_dict(), sort_keys=False)
    return Plan(p.data.name, float(p.data.rho), runs, frozenset(stages), p.mixing.max_label_change,
                p.mixing.min_transfer, text, smoke_reason(p))


def run(p, allow_missing: bool = False, docs: list[Path] | None = None) -> Reported | DocsRewritten:
    """Every run that train.modes and dfr.bases x train.seeds plan must have its evaluation; `allow_missing` makes
    a partial report instead, which says so. With `docs`, only those files' generated sections are rewritten (from
    metrics/summary.json and metrics/eval/), and the report is left as it is."""
    from advmix.report import ReportError, build_report, rewrite_docs

    try:
        if docs:
            rewrite_docs(plan_of(p), docs)
            return DocsRewritten(docs)
        return Reported(build_report(plan_of(p), allow_missing=allow_missing))
    except (FileNotFoundError, ReportError) as exc:
        raise StageError(str(exc)) from None
