"""report: the comparison of every mode, reports/summary.md, a self-contained reports/summary.html and
metrics/summary.json (advmix.report), with the AdvMix mixes that hurt the nominal model of `seed` most and the
AdvMix model's answers beside them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advmix.stages import StageError
from advmix.stages.read_data import dataset
from advmix.stages.read_gan import mixing_inputs


@dataclass
class Reported:
    summary_json: dict[str, Any]  # metrics/summary.json

    def summary(self) -> str:
        from advmix import paths

        s = self.summary_json
        gain = s.get("advmix_vs_nominal", {})
        return (f"{paths.SUMMARY_HTML}: {len(s['modes'])} modes; AdvMix vs nominal on test_balanced: relative error "
                f"reduction {gain.get('relative_error_reduction_balanced')} (95% CI "
                f"{gain.get('relative_error_reduction_ci')}), worst-group gain {gain.get('worst_group_gain')} "
                f"(95% CI {gain.get('worst_group_gain_ci')}) over seeds {gain.get('paired_seeds')}")


@dataclass
class DocRewritten:
    doc: Path

    def summary(self) -> str:
        from advmix import paths

        return f"{self.doc}: the generated section rewritten from {paths.SUMMARY_METRICS}"


def run(p, allow_missing: bool = False, results_doc: Path | None = None) -> Reported | DocRewritten:
    """Every run that train.modes x train.seeds plans must have its evaluation; `allow_missing` makes a partial
    report instead, which says so. With `results_doc`, only that file's generated section is rewritten (from
    metrics/summary.json and metrics/eval/), and the report is left as it is."""
    if results_doc is not None:
        rewrite_results_doc(results_doc)
        return DocRewritten(results_doc)
    import io

    import numpy as np

    from advmix import paths
    from advmix.files import atomic_write_bytes
    from advmix.report import build_report
    from advmix.stages.evaluate import load_classifier

    ds = dataset(p)
    models = {m: paths.classifier(m, p.seed) for m in ("nominal", "advmix")}
    if all(f.is_file() for f in models.values()) and paths.GENERATOR.is_file():
        from advmix.evaluate import worst_mixes
        from advmix.runtime import pick_device

        G, layers, latents = mixing_inputs(p, ds, "test_balanced")
        loaded = {m: load_classifier(m, p.seed) for m in models}
        arrays = worst_mixes(loaded, ds.split("test_balanced"), latents, G, layers, p,
                             pick_device(p.train.device, "train.device"))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(paths.WORST_MIXES, buffer.getvalue())
    try:
        summary = build_report(Path("."), class_names=ds.info.get("classes"), allow_missing=allow_missing)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
    return Reported(summary)


def rewrite_results_doc(doc: Path) -> None:
    """Only the generated section of `doc` (docs/results.md), from metrics/summary.json and metrics/eval/."""
    import json

    from advmix import paths
    from advmix.report import read_params, read_runs, replace_results_section, results_section

    try:
        summary = json.loads(paths.SUMMARY_METRICS.read_text())
        *_, planned = read_params(paths.PARAMS)  # the report's plan: DFR refits included
        runs = read_runs(Path("."), planned)
        replace_results_section(doc, results_section(summary, runs))
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
