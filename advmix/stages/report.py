"""report: the comparison of every planned run on one page (advmix/report/): reports/summary.md, a self-contained
reports/summary.html and metrics/summary.json. It reads the evaluations and the earlier stages' outputs only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advmix.stages import StageError


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


def run(p, allow_missing: bool = False, docs: list[Path] | None = None) -> Reported | DocsRewritten:
    """Every run that train.modes and dfr.bases x train.seeds plan must have its evaluation; `allow_missing` makes
    a partial report instead, which says so. With `docs`, only those files' generated sections are rewritten (from
    metrics/summary.json and metrics/eval/), and the report is left as it is."""
    from advmix.report import ReportError, build_report, rewrite_docs

    try:
        if docs:
            rewrite_docs(p, docs)
            return DocsRewritten(docs)
        return Reported(build_report(p, allow_missing=allow_missing))
    except (FileNotFoundError, ReportError) as exc:
        raise StageError(str(exc)) from None
