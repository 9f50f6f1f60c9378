"""The report: every stage's results on one page, as reports/summary.md, a self-contained reports/summary.html and
metrics/summary.json. It reads what the evaluations and the earlier stages wrote and computes no result of its own.

- collect.py: the plan (from the loaded params) and the files it reads, checked;
- summarize.py: summary.json's numbers (means, one seed-paired comparison per pair of modes, the perturbation set
  against its bar, the selection rules);
- plots.py: the forest plot, accuracy per group, the worst mixes;
- page.py: the page top to bottom, and the generated sections of README.md and docs/results.md;
- render.py: one renderer of blocks to Markdown and HTML (the Prefect flow's artifact uses it too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from advmix.figures import save_figure
from advmix.files import atomic_folder, atomic_write_bytes, atomic_write_json
from advmix.paths import (
    REPORTS,
    SUMMARY_BY_GROUP,
    SUMMARY_DIR,
    SUMMARY_HTML,
    SUMMARY_MD,
    SUMMARY_METRICS,
    SUMMARY_WORST_MIXES,
    WORST_MIXES,
)
from advmix.report import plots
from advmix.report.collect import STAGE_FIGURES, Inputs, Plan, ReportError, collect, read_json, read_runs
from advmix.report.page import (
    VARIANTS_BEGIN,
    headline_section,
    page_blocks,
    replace_generated,
    results_section,
    title,
    variants_section,
)
from advmix.report.render import Image, html_page, markdown
from advmix.report.summarize import summarize, worst_of

__all__ = ["ReportError", "build_report", "rewrite_docs"]
SUMMARY_FOREST = SUMMARY_DIR / "forest.png"


def build_report(plan: Plan, root: Path = Path("."), allow_missing: bool = False) -> dict[str, Any]:
    """Read every input, then render everything in memory, then write: a failed render leaves the old outputs.

    `plan` (advmix.stages.report.plan_of): every run that train.modes and dfr.bases x train.seeds plan must have
    its eval file; `allow_missing` makes a
    partial report instead, which says so at its top and in summary.json (`missing_runs`)."""
    root = Path(root)
    inputs = collect(root, plan, allow_missing)
    summary = summarize(inputs)
    with atomic_folder(root / SUMMARY_DIR) as folder:
        blocks = page_blocks(summary, inputs, images(summary, inputs, folder))
        text, html = markdown(blocks), html_page(blocks, title(summary))
    atomic_write_json(root / SUMMARY_METRICS, summary)
    atomic_write_bytes(root / SUMMARY_MD, text.encode())
    atomic_write_bytes(root / SUMMARY_HTML, html.encode())
    return summary


def images(summary: dict[str, Any], inputs: Inputs, folder: Path) -> dict[str, Image]:
    """The report's own figures drawn into `folder` (reports/summary/), then the earlier stages' ones."""
    own = (("forest", "Effect with 95% intervals", SUMMARY_FOREST, plots.forest(summary["comparisons"], worst_of(summary)["name"]),
            "fewer than two paired seeds"),
           ("by_group", "Accuracy per group on test_balanced", SUMMARY_BY_GROUP, plots.by_group(inputs.runs),
            "no by_group.csv with test_balanced rows"),
           ("worst_mixes", "The worst mixes against nominal", SUMMARY_WORST_MIXES,
            None if inputs.worst_mixes is None else plots.worst_mixes(inputs.worst_mixes, inputs.class_names),
            f"no {WORST_MIXES.as_posix()} (the worst-mixes stage)"))
    out = {}
    for name, caption, path, fig, why in own:
        md_path = path.relative_to(REPORTS).as_posix()
        if fig is None:
            out[name] = Image(caption, md_path, None, why)
            continue
        try:
            save_figure(fig, folder / path.name)
        finally:
            plt.close(fig)
        out[name] = Image(caption, md_path, (folder / path.name).read_bytes())
    for caption, path, stage in STAGE_FIGURES:
        data = inputs.figures.get(path)
        out[path.as_posix()] = Image(f"{caption} ({stage})", path.relative_to(REPORTS).as_posix(), data,
                                     "" if data else f"{path.as_posix()} not present")
    return out


# committed reports of DVC experiments, one folder each (docs/results.md says how each was made)
EXPERIMENT_REPORTS = REPORTS / "experiments"


def experiment_summaries(root: Path) -> dict[str, dict]:
    """The summary.json of each committed experiment report that has the current schema (its `comparisons`)."""
    found = {}
    for path in sorted((root / EXPERIMENT_REPORTS).glob("*/summary.json")):
        summary = read_json(path)
        if isinstance(summary, dict) and isinstance(summary.get("comparisons"), dict):
            found[path.parent.name] = summary
    return found


def rewrite_docs(plan: Plan, docs: list[Path], root: Path = Path(".")) -> None:
    """The generated sections of README.md (the headline) and of docs/results.md (the results), from
    metrics/summary.json and the planned runs' eval files; every file is checked before any is written."""
    summary = read_json(root / SUMMARY_METRICS)
    if summary is None:
        raise FileNotFoundError(f"{root / SUMMARY_METRICS}: missing; run `advmix report` first")
    runs = read_runs(root, plan.runs)
    texts = {}
    for doc in docs:
        section = headline_section(summary) if doc.name == "README.md" else results_section(summary, runs)
        texts[doc] = replace_generated(doc, markdown(section))
        if VARIANTS_BEGIN in texts[doc]:  # the benchmark: the default beside every committed experiment
            variants = {"default": summary} | experiment_summaries(root)
            texts[doc] = replace_generated(doc, markdown(variants_section(variants)), VARIANTS_BEGIN, texts[doc])
    for doc, text in texts.items():
        atomic_write_bytes(doc, text.encode())
