"""The report page, top to bottom, as blocks (advmix/report/render.py). Its first screen answers the question: one
sentence with the effect, its interval and whether it is beyond seed noise; whether the perturbation set meets its
bar; the forest plot of every comparison; a short table. The full tables, the figures and the lineage follow.
Also the generated sections of README.md and docs/results.md, from the same summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advmix.report.collect import Inputs, ReportError, Run
from advmix.report.render import Block, Callout, Heading, Image, Para, Pre, Table
from advmix.report.summarize import (
    METHOD,
    REFERENCE,
    RULE_TEXT,
    WORST_FIGURES,
    by_mode,
    mean_std,
    run_metrics,
    splits_of,
    values,
    worst_of,
)
from advmix.results import Metric, metrics_of


def title(summary: dict[str, Any]) -> str:
    missing = summary.get("missing_runs")
    partial = f" (PARTIAL: {len(missing)} planned runs missing: {', '.join(missing)})" if missing else ""
    smoke = " (smoke run)" if summary.get("smoke") else ""
    return f"advmix report{smoke}: {summary['dataset']}, rho = {summary['rho']:g}{partial}"


def headline(summary: dict[str, Any]) -> str:
    """One sentence: AdvMix against nominal with its interval, and whether it is beyond seed noise."""
    c = summary["comparisons"].get(f"{METHOD}_vs_{REFERENCE}")
    if c is None or c["relative_error_reduction"] is None:
        return "AdvMix against nominal: not measured (it needs both modes evaluated on a shared seed)."
    if c["relative_error_reduction_ci"] is None:
        r = c["relative_error_reduction"]
        return (f"**AdvMix's test_balanced error is {abs(r):.1%} {'lower' if r >= 0 else 'higher'} than nominal's** "
                f"on {len(c['paired_seeds'])} seed: with fewer than two seeds there is no interval, so this says "
                "nothing about seed noise.")
    r, (lo, hi) = c["relative_error_reduction"], c["relative_error_reduction_ci"]
    g, (glo, ghi) = c["worst_group_gain"], c["worst_group_gain_ci"]
    direction = "lower" if r >= 0 else "higher"
    return (f"**AdvMix's test_balanced error is {abs(r):.1%} {direction} than nominal's** (95% CI {lo:+.1%} to "
            f"{hi:+.1%} over {len(c['paired_seeds'])} paired seeds): {noise(lo, hi)}. Its {worst_of(summary)['name']} "
            f"changes by {g:+.3f} ({glo:+.3f} to {ghi:+.3f}).")


def noise(lo: float, hi: float) -> str:
    if lo > 0:
        return "beyond seed noise (the interval lies above 0)"
    if hi < 0:
        return "worse, beyond seed noise (the interval lies below 0)"
    return "within seed noise (the interval includes 0)"


def controls_sentence(summary: dict[str, Any]) -> str | None:
    """AdvMix against each control without group labels, in one sentence."""
    parts = []
    for c in summary["comparisons"].values():
        if c["mode"] != METHOD or c["reference"] == REFERENCE:
            continue
        ci = c["relative_error_reduction_ci"]
        if ci is None:
            parts.append(f"{c['reference']}: n/a")
            continue
        verdict = "AdvMix ahead" if ci[0] > 0 else "AdvMix behind" if ci[1] < 0 else "within noise"
        parts.append(f"{c['reference']} {c['relative_error_reduction']:+.1%} [{ci[0]:+.1%}, {ci[1]:+.1%}], "
                     f"{verdict}")
    if not parts:
        return None
    return ("Against the controls that read no group label (how much lower AdvMix's test_balanced error is than "
            "theirs, relative to theirs): " + "; ".join(parts) + ".")


# the cheap tools a user would try first for a colour-like nuisance: the report names which tool fits
JITTERS = ("colorjitter", "huejitter")


def tool_sentence(summary: dict[str, Any]) -> str | None:
    """Which tool fits this nuisance, from AdvMix against the jitter controls and the jitters against nominal: the
    generator pays only where AdvMix beats every jitter beyond seed noise; a jitter suffices where one is ahead of
    AdvMix, or beats nominal while AdvMix is not ahead of it, beyond seed noise; otherwise the runs do not tell."""
    comparisons = summary["comparisons"]
    jitters = [c for c in comparisons.values()
               if c["mode"] == METHOD and c["reference"] in JITTERS and c["relative_error_reduction_ci"] is not None]
    if not jitters:
        return None
    if all(c["relative_error_reduction_ci"][0] > 0 for c in jitters):
        return ("Which tool: the generator pays here. AdvMix beats every colour jitter beyond seed noise, so for "
                "this classifier the nuisance is more than a colour, and a jitter does not replace AdvMix.")
    best = min(jitters, key=lambda c: c["relative_error_reduction"])  # the jitter furthest ahead of AdvMix
    ahead = best["relative_error_reduction_ci"][1] < 0
    helps = [c["reference"] for c in jitters if (comparisons.get(f"{c['reference']}_vs_{REFERENCE}") or {}).get(
        "relative_error_reduction_ci") and comparisons[f"{c['reference']}_vs_{REFERENCE}"][
        "relative_error_reduction_ci"][0] > 0 and c["relative_error_reduction_ci"][0] <= 0]
    if ahead or helps:
        name = best["reference"] if ahead else helps[0]
        why = ("is ahead of AdvMix beyond seed noise" if ahead else
               "beats nominal beyond seed noise and AdvMix is not ahead of it")
        return (f"Which tool: a colour jitter suffices for this nuisance. {name} {why}, at a fraction of "
                "AdvMix's training cost; the generator buys nothing here that a jitter does not.")
    return ("Which tool: not shown. AdvMix is not beyond seed noise ahead of every colour jitter, and no jitter "
            "beats nominal beyond it; these seeds cannot say whether the generator is needed.")


def perturbation_sentence(pert: dict[str, Any] | None) -> tuple[str, bool]:
    """What the perturbation set does to inverted real faces against its bar, and whether it meets it."""
    if pert is None:
        return "The perturbation set was not measured (no metrics/layers.json).", True
    figures = (f"W+ rows {', '.join(map(str, pert['layers']))} ({pert['partners']} partner), measured on the "
               f"{pert['measured_on']} of the inverted real train faces ({pert['pairs']} pairs): label change "
               f"{pert['label_change']:.1%} (bar: at most {pert['max_label_change']:.0%}), `{pert['spurious']}` "
               f"moved in {pert['spurious_transfer']:.1%} of the pairs that differ in it (bar: at least "
               f"{pert['min_transfer']:.0%})")
    trained = pert.get("as_trained")
    if trained:
        residual = "with" if trained["residual"] else "without"
        figures += (f"; on the mixes training makes ({residual} the residual x - G(w_x)), judged against the real "
                    f"images: label change {trained['label_change']:.1%}, `{pert['spurious']}` moved in "
                    f"{trained['spurious_transfer']:.1%} ({'without' if trained['residual'] else 'with'} the "
                    f"residual: {trained['other_residual_transfer']:.1%})")
    if pert["meets_bar"]:
        return f"The perturbation set meets its bar: {figures}.", True
    why = ""
    if trained and trained["residual"] and trained["other_residual_transfer"] > trained["spurious_transfer"]:
        why = (" Inversion leaves part of the attribute in the residual, which every training mix adds back; "
               "`train.residual: false` lets the mixes move it.")
    return (f"The perturbation set does NOT meet its bar: {figures}. AdvMix and RandMix then train on mixes that "
            f"rarely move the spurious attribute (or change the label); read their numbers with that in mind.{why}"),\
        False


def smoke_blocks(summary: dict[str, Any]) -> list[Block]:
    """The warning that a smoke run's numbers measure nothing, first thing under the title."""
    if not summary.get("smoke"):
        return []
    return [Callout(f"Smoke run ({summary['smoke']}): these numbers show that every stage runs and what it writes, "
                    "not an effect.")]


def worst_blocks(summary: dict[str, Any]) -> list[Block]:
    """Why the worst-case figure is not worst-group accuracy, where it is not."""
    worst = worst_of(summary)
    if worst["key"] == "worst_group_acc":
        return []
    return [Para(f"The worst-case figure here is {worst['name']}: {worst['why']}.")]


def page_blocks(summary: dict[str, Any], inputs: Inputs, images: dict[str, Image]) -> list[Block]:
    """The whole report. `images`: the report's own figures by name, and the earlier stages' by path."""
    pert_text, meets = perturbation_sentence(summary["perturbation_set"])
    blocks: list[Block] = [Heading(1, title(summary)), *smoke_blocks(summary)]
    if summary["missing_runs"]:
        blocks.append(Callout(f"Partial report: no evaluation of {', '.join(summary['missing_runs'])}."))
    if inputs.validation is None or not inputs.validation["success"]:
        blocks.append(Callout("The data did not pass validation (metrics/validation.json: "
                              f"{'absent' if inputs.validation is None else 'failed'}); see Data validation below."))
    blocks += [Para(headline(summary))]
    blocks += [Para(text) for text in (controls_sentence(summary), tool_sentence(summary)) if text is not None]
    blocks += [Para(pert_text) if meets else Callout(pert_text), images["forest"],
               Table(*short_table(summary)), *worst_blocks(summary),
               Para(f"Dataset `{summary['dataset']}`, label/spurious agreement rho = {summary['rho']:g} in train, "
                    "val and test_iid; test_balanced has every group equally often. Means over seeds ± sample std. "
                    f"Intervals: {summary['ci_method']}."),
               Heading(2, "All comparisons"), Table(*comparisons_table(summary["comparisons"], worst_of(summary)["name"])),
               Heading(2, "Every metric"), Table(*full_table(summary, inputs.runs), wide=True),
               Para("Lower error, fairness gaps (EOD, DPD) and calibration error (ECE) are better; higher accuracies "
                    "are better; bold: the best mode of a column."),
               Heading(2, "Model selection rules"), Table(*selection_table(summary["selection"]), wide=True),
               Para("Rules: " + "; ".join(f"`{r}`: {t}" for r, t in RULE_TEXT.items()) + ". Group labels in "
                    "training: `train` = Group DRO, `val` = a DFR refit (its last layer fit on group-balanced val), "
                    "`none` = the rest. The val_worst_group rule is measured clean (no attack)."),
               Heading(2, "Per seed"), Table(*per_seed_table(inputs.runs), wide=True),
               Heading(2, "Figures")]
    for image in images.values():
        if image is not images["forest"]:
            blocks += [Heading(3, image.caption), image]
    blocks += [Heading(2, "Data validation"), *validation_blocks(inputs.validation),
               Heading(2, "GAN"), gan_block(inputs.gan),
               Heading(2, "Params"), Pre(inputs.plan.params_yaml, "yaml"),
               Heading(2, "Data versions (dvc.lock)"), *lineage_blocks(inputs.lock)]
    return blocks


def short_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The columns people read first."""
    worst = worst_of(summary)
    headers = ["mode", "test_balanced error", worst["name"].replace("accuracy", "acc"),
               "vs nominal: rel. error reduction [95% CI]", "group labels read"]
    rows = []
    for mode, entry in summary["modes"].items():
        balanced = entry.get("test_balanced", {})
        c = summary["comparisons"].get(f"{mode}_vs_{REFERENCE}")
        rows.append([mode, fmt(balanced.get("error"), balanced.get("error_std")),
                     fmt(balanced.get(worst["key"]), balanced.get(f"{worst['key']}_std")),
                     "(reference)" if mode == REFERENCE else gain_cell(c, "relative_error_reduction"),
                     entry["group_labels_read"]])
    return headers, rows


def gain_cell(c: dict[str, Any] | None, key: str) -> str:
    if c is None or c.get(f"{key}_ci") is None:
        return "n/a"
    lo, hi = c[f"{key}_ci"]
    if key == "relative_error_reduction":
        return f"{c[key]:+.1%} [{lo:+.1%}, {hi:+.1%}]"
    return f"{c[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def comparisons_table(comparisons: dict[str, dict[str, Any]], worst: str = WORST_FIGURES["worst_group_acc"]
                      ) -> tuple[list[str], list[list[str]]]:
    headers = ["mode", "against", "seeds", "rel. test_balanced error reduction [95% CI]",
               f"{worst.removesuffix(' accuracy')} gain [95% CI]", "verdict"]
    rows = []
    for c in comparisons.values():
        ci = c["relative_error_reduction_ci"]
        rows.append([c["mode"], c["reference"], ", ".join(map(str, c["paired_seeds"])),
                     gain_cell(c, "relative_error_reduction"), gain_cell(c, "worst_group_gain"),
                     "n/a" if ci is None else noise(*ci).split(" (")[0]])
    return headers, rows


def full_table(summary: dict[str, Any], runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Per mode the mean ± std of every figure of results.METRICS; the best mode of each column in bold."""
    metrics = metrics_of([r.result for r in runs])
    grouped = by_mode(runs)
    cells = {mode: {m: mean_std_of(m, entry, grouped[mode]) for m in metrics}
             for mode, entry in summary["modes"].items()}
    best = {}
    for m in metrics:
        means = [c[m][0] for c in cells.values() if c[m][0] is not None]
        best[m] = (max if m.higher_is_better else min)(means) if len(means) > 1 else None

    def cell(mode: str, m: Metric) -> str:
        mean, std = cells[mode][m]
        text = fmt(mean, std)
        return f"**{text}**" if mean is not None and mean == best[m] else text

    return ["mode", *(m.label for m in metrics)], [[mode, *(cell(mode, m) for m in metrics)] for mode in cells]


def mean_std_of(metric: Metric, entry: dict[str, Any], runs: list[Run]) -> tuple[float | None, float | None]:
    """A mode's mean and std of `metric`: a split metric from its summary entry, a run-level one from the runs."""
    if metric.split is None:
        return mean_std(values(runs, metric))
    split = entry.get(metric.split, {})
    return split.get(metric.key), split.get(f"{metric.key}_std")


def selection_table(selection: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["mode", "group labels in training", "selection rule", "epochs kept (per seed)", "test_iid acc",
               "test_balanced error", "worst-group acc (balanced)", "worst group per seed",
               "rel. error reduction vs nominal [95% CI]", "worst-group gain [95% CI]"]
    rows = []
    for mode, entry in selection["modes"].items():
        for rule, f in entry.items():
            if rule == "group_labels_in_training":
                continue
            g = f.get("vs_nominal")
            rows.append([
                mode, entry["group_labels_in_training"], rule,
                ", ".join("?" if e is None else str(e + 1) for e in f["epochs"]),
                fmt(f["test_iid_acc"], f["test_iid_acc_std"]),
                fmt(f["test_balanced_error"], f["test_balanced_error_std"]),
                fmt(f["test_balanced_worst_group_acc"], f["test_balanced_worst_group_acc_std"]),
                ", ".join(fmt(v) for v in f["test_balanced_worst_group_acc_per_seed"]),
                "(reference)" if mode == REFERENCE else gain_cell(g, "relative_error_reduction"),
                "(reference)" if mode == REFERENCE else gain_cell(g, "worst_group_gain"),
            ])
    return headers, rows


def per_seed_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    splits, figures = splits_of(runs), run_metrics(runs)
    headers = ["mode", "seed", *(f"{s} error" for s in splits), "worst-group acc (balanced)",
               *(m.label for m in figures)]
    rows = [[run.mode, str(run.seed), *(fmt(run.splits[s]["error"]) if s in run.splits else "n/a" for s in splits),
             fmt(run.splits.get("test_balanced", {}).get("worst_group_acc")), *(fmt(run.figure(m)) for m in figures)]
            for mode_runs in by_mode(runs).values() for run in mode_runs]
    return headers, rows


def validation_blocks(validation: dict[str, Any] | None) -> list[Block]:
    if validation is None:
        return [Para("*metrics/validation.json not present: the data were not validated.*")]
    failed = validation.get("failed") or []
    verdict = "**passed**" if validation["success"] else "**FAILED**"
    line = f"Great Expectations suites {verdict}: {validation.get('evaluated', '?')} expectations evaluated, " + (
        f"failed: {', '.join(map(str, failed))}." if failed else "none failed.")
    return [Para(line), Table(["key", "value"], flatten(validation))]


def gan_block(gan: dict[str, Any] | None) -> Block:
    if gan is None:
        return Para("*metrics/gan.json not present.*")
    return Table(["key", "value"], flatten({k: v for k, v in gan.items() if not isinstance(v, dict | list)}))


def lineage_blocks(lock: dict[str, Any] | None) -> list[Block]:
    """Each planned stage's data deps and outs with their md5: which data produced these numbers. Code deps are
    counted, not listed (dvc.lock has their md5s)."""
    if lock is None:
        return [Para("*dvc.lock not present: these results were not produced by `dvc repro`.*")]
    rows = []
    for stage, body in lock.items():
        code = 0
        for kind in ("deps", "outs"):
            for item in (body or {}).get(kind, []) or []:
                if not isinstance(item, dict) or "path" not in item:
                    continue
                if kind == "deps" and str(item["path"]).startswith("advmix/"):
                    code += 1
                    continue
                rows.append([stage, kind, str(item["path"]), str(item.get("md5") or item.get("hash") or "")])
        if code:
            rows.append([stage, "deps", f"{code} advmix/ code files", "(in dvc.lock)"])
    return [Table(["stage", "kind", "path", "md5"], rows, wide=True)]


def flatten(obj: dict[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in obj.items():
        if isinstance(value, dict):
            rows += flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            rows.append([f"{prefix}{key}", ", ".join(scalar(v) for v in value) or "none"])
        else:
            rows.append([f"{prefix}{key}", scalar(value)])
    return rows


def scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt(mean: float | None, std: float | None = None, signed: bool = False) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if std is None else f"{text} ± {std:.3f}"


# ---------------------------------------------------------------- generated sections of README.md, docs/results.md

GENERATED_BEGIN, GENERATED_END = "<!-- generated: advmix report --docs -->", "<!-- /generated -->"


def headline_section(summary: dict[str, Any]) -> list[Block]:
    """README.md's and the Prefect flow's artifact: the sentences and the short table."""
    blocks: list[Block] = [*smoke_blocks(summary), Para(headline(summary))]
    blocks += [Para(text) for text in (controls_sentence(summary), tool_sentence(summary)) if text is not None]
    return [*blocks, Table(*short_table(summary))]


def results_section(summary: dict[str, Any], runs: list[Run]) -> list[Block]:
    """docs/results.md's: the first screen's numbers, every comparison, the per-seed errors and the selection."""
    seeds = sorted({r.seed for r in runs})
    per_seed = [[mode, *(fmt(next((r.splits["test_balanced"]["error"] for r in group if r.seed == s
                                   and "test_balanced" in r.splits), None)) for s in seeds)]
                for mode, group in by_mode(runs).items()]
    return [*headline_section(summary), Para(perturbation_sentence(summary["perturbation_set"])[0]),
            Para(f"Dataset `{summary['dataset']}`, rho = {summary['rho']:g}; intervals: {summary['ci_method']}."),
            Table(*comparisons_table(summary["comparisons"], worst_of(summary)["name"])),
            Para("Test_balanced error per seed:"), Table(["mode", *(f"s{s}" for s in seeds)], per_seed),
            Para("Under both model-selection rules (" + "; ".join(f"`{r}`: {t}" for r, t in RULE_TEXT.items())
                 + "):"),
            Table(*selection_table(summary["selection"]))]


def replace_generated(doc: Path, section: str, begin: str = GENERATED_BEGIN, text: str | None = None) -> str:
    """`doc`'s text (or `text`) with the part between `begin` and the next GENERATED_END replaced by `section`."""
    text = doc.read_text() if text is None else text
    if begin not in text or GENERATED_END not in text.split(begin, 1)[1]:
        raise ReportError(f"{doc}: expected the markers {begin} and {GENERATED_END} around the section")
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{section}{GENERATED_END}{rest.split(GENERATED_END, 1)[1]}"


# ---------------------------------------------------------------- the benchmark across variants (docs/results.md)

VARIANTS_BEGIN = "<!-- generated: advmix report --docs (variants) -->"
VARIANT_CONTROLS = ("nominal", "randmix", "colorjitter", "huejitter")  # what AdvMix is compared with per variant


def variants_section(variants: dict[str, dict[str, Any]]) -> list[Block]:
    """One row per variant (its name -> its summary.json): the nuisance, the perturbation set on inverted real
    faces, AdvMix against nominal and each label-free control with seed-paired CIs, and which tool fits; then
    each mode's test_balanced error and worst group per variant."""
    head = ["variant", "spurious, rho", "perturbation set: rows, label change, transfer",
            *(f"AdvMix vs {c}" for c in VARIANT_CONTROLS), "which tool"]
    rows, modes_rows = [], []
    for name, summary in variants.items():
        pert = summary["perturbation_set"]
        trained = pert and pert.get("as_trained")
        set_text = (f"{'-'.join(map(str, pert['layers']))}, {pert['label_change']:.1%}, "
                    f"{pert['spurious_transfer']:.1%}"
                    + (f"; as trained (residual {'on' if trained['residual'] else 'off'}) "
                       f"{trained['label_change']:.1%}, {trained['spurious_transfer']:.1%}" if trained else "")
                    + ('' if pert['meets_bar'] else ' (below the bar)') if pert else "n/a")
        cells = []
        for control in VARIANT_CONTROLS:
            c = summary["comparisons"].get(f"{METHOD}_vs_{control}")
            ci = c and c["relative_error_reduction_ci"]
            cells.append(f"{c['relative_error_reduction']:+.1%} [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else "not run")
        tool = tool_sentence(summary)
        rows.append([name, f"{pert['spurious'] if pert else '?'}, {summary['rho']:g}", set_text, *cells,
                     "n/a" if tool is None else tool.split(". ")[0].removeprefix("Which tool: ")])
        for mode, figures in summary["modes"].items():
            balanced = figures.get("test_balanced", {})
            worst = worst_of(summary)
            if "error" in balanced:
                modes_rows.append([name, mode, f"{balanced['error']:.3f} ± {balanced['error_std']:.3f}",
                                   (f"{balanced[worst['key']]:.3f} ± {balanced[worst['key'] + '_std']:.3f} "
                                    f"({worst['name'].removesuffix(' accuracy')})")])
    return [Table(head, rows), Para("AdvMix against each mode: how much lower AdvMix's test_balanced error is, "
                                    "relative to the other's, with its seed-paired 95% interval."),
            Table(["variant", "mode", "test_balanced error", "worst-case acc"], modes_rows)]
