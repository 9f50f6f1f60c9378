"""The report: summary.json means and seed-paired comparisons, a self-contained HTML page whose first screen answers
the question, clear errors, atomic outputs, and only files the plan's stages write."""

import base64
import json
import re

import numpy as np
import pytest
import yaml

from advmix import report
from advmix.figures import save_png
from advmix.params import parse_params
from advmix.report import page
from advmix.report.render import markdown
from advmix.stages.report import plan_of

SPLITS = ("val", "test_iid", "test_balanced", "test_flipped")
GROUPS = ("not_smiling/not_skin_dark", "not_smiling/skin_dark", "smiling/not_skin_dark", "smiling/skin_dark")
# (mode, seed) -> test_balanced error, worst-group acc, eod; every other split's error is this error + 0.01
NUMBERS = {
    ("nominal", 0): (0.30, 0.50, 0.20), ("nominal", 1): (0.20, 0.60, 0.10),
    ("advmix", 0): (0.20, 0.70, 0.05), ("advmix", 1): (0.10, 0.80, 0.15),
    ("linf", 0): (0.28, 0.40, 0.30), ("linf", 1): (0.22, 0.50, 0.40),
}
SEMANTIC = {"nominal": (0.6, 0.7), "advmix": (0.9, 0.8), "linf": (None, None)}
VALIDATION = {"success": True, "evaluated": 29, "failed": [],
              "rho_realised": {"train": 0.95, "val": 0.95, "test_iid": 0.95, "test_balanced": 0.5,
                               "test_flipped": 0.05}}


def write_eval(root, mode, seed, err, wga, eod, semantic=None):
    splits = {s: {"acc": 1 - (err if s == "test_balanced" else err + 0.01),
                  "error": err if s == "test_balanced" else err + 0.01, "worst_group_acc": wga,
                  "n": 100, "avg_acc_train_weighted": 0.9, "eod": eod, "dpd": eod / 2, "deo": eod, "ece": 0.05,
                  "group_acc": {g: wga + 0.05 * i for i, g in enumerate(GROUPS)}} for s in SPLITS}
    body = {"mode": mode, "seed": seed, "uses_group_labels": mode == "groupdro",
            "group_labels_read": "train" if mode == "groupdro" else "none", "splits": splits,
            "semantic_robust_acc": semantic, "mix_change_error": None if semantic is None else semantic - 0.1,
            "pgd_robust_acc": {"2/255": 0.5, "8/255": 0.1}}
    path = root / "metrics" / "eval" / f"{mode}-s{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"eval_{mode}_s{seed}": body}))
    return path


def write_by_group(root, mode, seed, wga):
    folder = root / "results" / "eval" / f"{mode}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["split,group,n,acc,selection_rate,tpr"]
    lines += [f"{s},{g},50,{wga + 0.05 * i:.3f},0.5,0.8" for s in ("val", "test_balanced") for i, g in enumerate(GROUPS)]
    (folder / "by_group.csv").write_text("\n".join(lines) + "\n")


def plan(modes=("nominal", "advmix", "linf"), seeds=(0, 1), bases=(), **mixing):
    """The report's plan of params planning exactly `modes` x `seeds` and DFR on `bases`."""
    return plan_of(parse_params({"data": {"name": "synthfaces", "rho": 0.9},
                         "train": {"modes": list(modes), "seeds": list(seeds)}, "dfr": {"bases": list(bases)},
                         "mixing": mixing}))


def write_inputs(root, modes=("nominal", "advmix", "linf"), by_group=True, extras=True):
    for (mode, seed), (err, wga, eod) in NUMBERS.items():
        if mode in modes:
            write_eval(root, mode, seed, err, wga, eod, SEMANTIC[mode][seed])
            if by_group:
                write_by_group(root, mode, seed, wga)
    if not extras:
        return
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    (root / "results" / "report").mkdir(parents=True)
    np.savez(root / "results" / "report" / "worst_mixes.npz", clean=images, mixed=255 - images,
             label=np.array([0, 1, 1]), pred_nominal=np.array([1, 0, 1]))
    save_png(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), root / "reports" / "layers.png")
    save_png(np.zeros((4, 4, 3), dtype=np.uint8), root / "reports" / "gan" / "samples.png")
    (root / "metrics" / "validation.json").write_text(json.dumps(VALIDATION))
    (root / "metrics" / "layers.json").write_text(json.dumps(LAYERS))
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: advmix prepare\n    deps:\n    - path: advmix/params.py\n"
        "      md5: c0de\n    outs:\n    - path: data/synthfaces\n      hash: md5\n      md5: abc123.dir\n"
        "  train@augmix-7:\n    cmd: advmix train\n    outs:\n    - path: models/classifier-augmix-s7.pt\n"
        "      md5: 5tale\n")


LAYERS = {"perturbation": {"layers": [0, 1], "spurious": "skin_dark", "measured_on": "held-out half",
                           "real": {"partners": "any", "n": 512, "label_change": 0.045, "spurious_transfer": 0.869}}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_inputs(root)
    summary = report.build_report(plan(), root)
    return root, summary


def test_summary_json_schema_and_means(built):
    root, summary = built
    assert json.loads((root / "metrics" / "summary.json").read_text()) == summary
    assert summary["dataset"] == "synthfaces" and summary["rho"] == 0.9
    assert list(summary["modes"]) == ["nominal", "advmix", "linf"]
    for entry in summary["modes"].values():
        assert entry["seeds"] == [0, 1] and entry["group_labels_read"] == "none"
        for split in SPLITS:
            assert {"error", "worst_group_acc", "eod", "dpd", "ece"} <= set(entry[split])
    nominal, advmix, linf = (summary["modes"][m] for m in ("nominal", "advmix", "linf"))
    assert nominal["test_balanced"]["error"] == pytest.approx(0.25)
    assert nominal["test_balanced"]["error_std"] == pytest.approx(0.1 / 2**0.5)
    assert nominal["test_flipped"]["error"] == pytest.approx(0.26)
    assert nominal["test_balanced"]["worst_group_acc"] == pytest.approx(0.55)
    assert nominal["test_balanced"]["eod"] == pytest.approx(0.15)
    assert nominal["test_balanced"]["dpd"] == pytest.approx(0.075)
    assert nominal["test_balanced"]["ece"] == pytest.approx(0.05)
    assert advmix["test_balanced"]["error"] == pytest.approx(0.15)
    assert advmix["test_balanced"]["eod"] == pytest.approx(0.10)
    assert linf["test_balanced"]["error"] == pytest.approx(0.25)
    assert nominal["semantic_robust_acc"] == pytest.approx(0.65)
    assert nominal["mix_change_error"] == pytest.approx(0.55)
    assert advmix["semantic_robust_acc"] == pytest.approx(0.85)
    assert linf["semantic_robust_acc"] is None and linf["mix_change_error"] is None
    # one block per pair: every mode against nominal, then AdvMix against each control without group labels
    assert list(summary["comparisons"]) == ["advmix_vs_nominal", "linf_vs_nominal", "advmix_vs_linf"]
    gain = summary["comparisons"]["advmix_vs_nominal"]
    assert gain["mode"] == "advmix" and gain["reference"] == "nominal"
    assert gain["relative_error_reduction"] == pytest.approx(0.4)  # (0.25 - 0.15) / 0.25
    assert gain["worst_group_gain"] == pytest.approx(0.2)  # 0.75 - 0.55
    lo, hi = gain["relative_error_reduction_ci"]
    assert lo <= gain["relative_error_reduction"] <= hi and gain["paired_seeds"] == [0, 1]
    assert summary["comparisons"]["advmix_vs_linf"]["relative_error_reduction"] == pytest.approx(0.4)  # vs 0.25
    assert "bootstrap" in summary["ci_method"]
    pert = summary["perturbation_set"]
    assert (pert["layers"], pert["pairs"], pert["label_change"], pert["meets_bar"]) == ([0, 1], 512, 0.045, True)


def test_advmix_against_a_control_is_a_seed_paired_interval_of_the_difference(tmp_path):
    """A hand-made case: AdvMix's error is 0.05 below RandMix's on every one of five seeds, whose own errors
    spread widely. Paired by seed the interval of the difference excludes 0, though the modes' spreads overlap."""
    for seed, base in enumerate((0.10, 0.30, 0.20, 0.40, 0.25)):
        write_eval(tmp_path, "nominal", seed, base + 0.20, 0.30, 0.1)
        write_eval(tmp_path, "randmix", seed, base, 0.60, 0.1)
        write_eval(tmp_path, "advmix", seed, base - 0.05, 0.62 + 0.01 * seed, 0.1)
    summary = report.build_report(plan(("nominal", "randmix", "advmix"), seeds=range(5)), tmp_path)
    c = summary["comparisons"]["advmix_vs_randmix"]
    assert (c["mode"], c["reference"], c["paired_seeds"]) == ("advmix", "randmix", [0, 1, 2, 3, 4])
    assert c["relative_error_reduction"] == pytest.approx(0.05 / 0.25)
    lo, hi = c["relative_error_reduction_ci"]
    assert 0.1 < lo <= 0.2 <= hi < 0.5
    assert c["worst_group_gain"] == pytest.approx(0.04) and c["worst_group_gain_ci"][0] > 0
    page = (tmp_path / "reports" / "summary.md").read_text()
    assert "randmix +20.0% [" in page and "AdvMix ahead" in page.split("## All comparisons")[0]


def test_relative_reduction_null_when_nominal_error_is_zero_or_a_mode_is_missing(tmp_path):
    write_inputs(tmp_path, modes=("nominal", "linf"), by_group=False, extras=False)
    summary = report.build_report(plan(("nominal", "linf")), tmp_path)
    assert list(summary["comparisons"]) == ["linf_vs_nominal"]  # no AdvMix: no AdvMix comparison
    assert "not measured" in (tmp_path / "reports" / "summary.md").read_text()
    write_eval(tmp_path, "nominal", 0, 0.0, 1.0, 0.0)
    write_eval(tmp_path, "nominal", 1, 0.0, 1.0, 0.0)
    write_eval(tmp_path, "advmix", 0, 0.1, 0.9, 0.0)
    summary = report.build_report(plan(), tmp_path, allow_missing=True)  # advmix-s1 is missing
    assert summary["missing_runs"] == ["advmix-s1"]
    assert summary["comparisons"]["advmix_vs_nominal"] == {  # nominal makes no error: no relative reduction
        "mode": "advmix", "reference": "nominal", "paired_seeds": [0], "relative_error_reduction": None,
        "relative_error_reduction_ci": None, "worst_group_gain": pytest.approx(-0.1), "worst_group_gain_ci": None}
    assert summary["modes"]["advmix"]["seeds"] == [0]
    assert summary["modes"]["advmix"]["test_balanced"]["error_std"] is None


def test_only_the_runs_the_params_plan_enter_the_report(tmp_path):
    """A DVC experiment that trains nominal and AdvMix keeps the committed eval files of the other modes."""
    write_inputs(tmp_path, by_group=False, extras=False)
    summary = report.build_report(plan(("nominal", "advmix"), seeds=[1]), tmp_path)
    assert list(summary["modes"]) == ["nominal", "advmix"]
    assert summary["modes"]["nominal"]["seeds"] == [1]
    one = summary["comparisons"]["advmix_vs_nominal"]  # one seed: the point estimate, no interval
    assert one["relative_error_reduction"] == pytest.approx(0.5) and one["relative_error_reduction_ci"] is None
    with pytest.raises(FileNotFoundError, match="planned runs"):
        report.build_report(plan(("augmix",)), tmp_path)


def test_html_is_self_contained_and_its_first_screen_answers_the_question(built):
    root, _ = built
    page = (root / "reports" / "summary.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    for png in ("reports/layers.png", "reports/gan/samples.png", "reports/summary/by_group.png",
                "reports/summary/worst_mixes.png", "reports/summary/forest.png"):
        data = (root / png).read_bytes()
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in page, png
    assert page.count("data:image/png;base64,") == 5
    # top to bottom: the sentence, the perturbation set, the forest plot, the short table, then the rest
    first = page.index("<strong>AdvMix&#x27;s test_balanced error is 40.0% lower than nominal&#x27;s</strong>")
    order = [first, page.index("The perturbation set meets its bar"), page.index('alt="Effect with 95% intervals"'),
             page.index("vs nominal: rel. error reduction [95% CI]"), page.index("<h2>All comparisons</h2>")]
    assert order == sorted(order)
    assert "**" not in page  # bold renders as bold, in tables too
    assert "<td><strong>0.150 ± 0.071</strong></td>" in page
    assert "white-space: nowrap" in page  # a cell never wraps its ± onto a second line
    assert "Missing: reports/inversion.png not present" in page  # an absent optional image is noted, not fatal
    assert "Missing: reports/gan/mixing.png not present" in page
    assert "abc123.dir" in page and "data/synthfaces" in page  # data versions from dvc.lock
    assert "1 advmix/ code files" in page and "c0de" not in page  # code deps counted, not listed
    assert "augmix-s7" not in page and "5tale" not in page  # a lock entry of another plan is not shown
    assert "rho_realised.test_flipped" in page and "passed" in page  # validation summary
    assert "name: synthfaces" in page and "rho: 0.9" in page  # the loaded params


@pytest.mark.parametrize("advmix_below,jitter_gain,tool", [
    (0.05, 0.20, "the generator pays here"),
    (-0.05, 0.20, "a colour jitter suffices for this nuisance. colorjitter is ahead of AdvMix"),
    (0.0, 0.20, "a colour jitter suffices for this nuisance. colorjitter beats nominal"),
    (0.0, 0.0, "not shown"),  # AdvMix alternately ahead and behind; the jitters equal to nominal
])
def test_the_first_screen_names_the_tool_that_fits_the_nuisance(tmp_path, advmix_below, jitter_gain, tool):
    """AdvMix below, above or level with both jitters, which beat nominal or do not: the generator pays, a jitter
    suffices, or the runs do not tell."""
    for seed, base in enumerate((0.10, 0.30, 0.20, 0.40, 0.25)):
        write_eval(tmp_path, "nominal", seed, base + jitter_gain, 0.30, 0.1)
        for jitter in ("colorjitter", "huejitter"):
            write_eval(tmp_path, jitter, seed, base, 0.60, 0.1)
        write_eval(tmp_path, "advmix", seed, base - advmix_below + (0.03 if seed % 2 else -0.03), 0.62, 0.1)
    report.build_report(plan(("nominal", "advmix", "colorjitter", "huejitter"), seeds=range(5)), tmp_path)
    first_screen = (tmp_path / "reports" / "summary.md").read_text().split("## All comparisons")[0]
    assert f"Which tool: {tool}" in first_screen


def test_a_perturbation_set_below_its_bar_is_stated_first(tmp_path):
    write_inputs(tmp_path, modes=("nominal", "advmix"), by_group=False)
    summary = report.build_report(plan(("nominal", "advmix"), min_transfer=0.9), tmp_path)
    assert summary["perturbation_set"]["meets_bar"] is False and summary["perturbation_set"]["min_transfer"] == 0.9
    md = (tmp_path / "reports" / "summary.md").read_text()
    callout = next(line for line in md.splitlines() if "does NOT meet its bar" in line)
    assert callout.startswith("> **") and "86.9%" in callout and "at least 90%" in callout
    assert md.index(callout) < md.index("## All comparisons")


def test_markdown_references_images_by_relative_path(built):
    root, _ = built
    md = (root / "reports" / "summary.md").read_text()
    for rel in ("summary/by_group.png", "summary/worst_mixes.png", "summary/forest.png", "layers.png",
                "gan/samples.png"):
        assert f"]({rel})" in md
        assert (root / "reports" / rel).is_file()
    assert "| nominal | 0.250 ± 0.071 | 0.550 ± 0.071 | (reference) | none |" in md  # the short table
    assert "| advmix | **0.150 ± 0.071** | **0.750 ± 0.071** |" in md  # the best of a column, by direction
    assert "| linf |" in md and "n/a" in md  # linf has no semantic robust accuracy
    assert "Missing: reports/inversion.png not present" in md


def test_missing_eval_jsons_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "metrics"))):
        report.build_report(plan(("nominal",)), tmp_path)


def test_malformed_inputs_name_the_file(tmp_path):
    write_inputs(tmp_path, modes=("nominal",), by_group=False, extras=False)
    bad = tmp_path / "metrics" / "eval" / "advmix-s0.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*not valid JSON"):
        report.build_report(plan(("nominal", "advmix")), tmp_path)
    bad.write_text(json.dumps({"eval_advmix_s0": {"mode": "advmix", "seed": 0, "splits": {"test_balanced": {
        "error": 0.1}}}}))
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*uses_group_labels: field required.*rerun"):
        report.build_report(plan(("nominal", "advmix")), tmp_path)
    bad.unlink()
    csv = tmp_path / "results" / "eval" / "nominal-s0" / "by_group.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("split,group\nval,a\n")
    with pytest.raises(ValueError, match=re.escape(str(csv)) + ".*missing column"):
        report.build_report(plan(("nominal",)), tmp_path)
    csv.unlink()
    (tmp_path / "metrics" / "layers.json").write_text("[1, 2]")
    with pytest.raises(report.ReportError, match="layers.json: expected a JSON object"):
        report.build_report(plan(("nominal",)), tmp_path)


def test_multiclass_runs_have_null_fairness_gaps_and_still_report(tmp_path):
    """EOD and DPD are two-class metrics: evaluate writes null for colordigits' ten classes."""
    write_inputs(tmp_path, modes=("nominal", "advmix"), by_group=False, extras=False)
    for path in (tmp_path / "metrics" / "eval").glob("*.json"):
        raw = json.loads(path.read_text())
        for split in next(iter(raw.values()))["splits"].values():
            split["eod"] = split["dpd"] = None
        path.write_text(json.dumps(raw))
    summary = report.build_report(plan(("nominal", "advmix")), tmp_path)
    assert summary["modes"]["advmix"]["test_balanced"]["eod"] is None
    assert summary["comparisons"]["advmix_vs_nominal"]["relative_error_reduction"] == pytest.approx(0.4)
    assert "n/a" in (tmp_path / "reports" / "summary.md").read_text()
    raw = json.loads(path.read_text())
    del next(iter(raw.values()))["splits"]["val"]["ece"]  # a figure every split has: its absence is an error
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": splits.val.ece: field required"):
        report.build_report(plan(("nominal", "advmix")), tmp_path)


def test_a_failed_render_writes_nothing(tmp_path, monkeypatch):
    write_inputs(tmp_path, by_group=False, extras=False)

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "html_page", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        report.build_report(plan(), tmp_path)
    assert not (tmp_path / "reports" / "summary.html").exists()
    assert not (tmp_path / "reports" / "summary.md").exists()
    assert not (tmp_path / "metrics" / "summary.json").exists()
    assert not (tmp_path / "reports" / "summary").exists()
    assert [p.name for p in (tmp_path / "reports").iterdir()] == []  # no temp files or folders left

    monkeypatch.undo()
    report.build_report(plan(), tmp_path)
    before = (tmp_path / "reports" / "summary.html").read_bytes()
    monkeypatch.setattr(report, "html_page", broken)
    write_eval(tmp_path, "nominal", 0, 0.5, 0.1, 0.1)
    with pytest.raises(RuntimeError):
        report.build_report(plan(), tmp_path)
    assert (tmp_path / "reports" / "summary.html").read_bytes() == before  # the old report stays whole
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["summary", "summary.html", "summary.md"]


def test_an_incomplete_plan_is_refused_unless_a_partial_report_is_asked_for(tmp_path):
    write_inputs(tmp_path, by_group=False, extras=False)
    (tmp_path / "metrics" / "eval" / "advmix-s1.json").unlink()
    with pytest.raises(report.ReportError, match="planned run.*advmix-s1.*--allow-missing"):
        report.build_report(plan(), tmp_path)
    assert not (tmp_path / "metrics" / "summary.json").exists()  # nothing written
    summary = report.build_report(plan(), tmp_path, allow_missing=True)
    assert summary["missing_runs"] == ["advmix-s1"] and summary["modes"]["advmix"]["seeds"] == [0]
    md = (tmp_path / "reports" / "summary.md").read_text()
    assert "PARTIAL" in md.splitlines()[0] and "Partial report: no evaluation of advmix-s1" in md


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_metric_is_refused(tmp_path, bad):
    write_inputs(tmp_path, modes=("nominal",), by_group=False, extras=False)
    path = write_eval(tmp_path, "nominal", 1, bad, 0.5, 0.1)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": splits.val.acc: input should be a finite number"):
        report.build_report(plan(("nominal",)), tmp_path)


def test_the_generated_sections_are_rewritten_between_their_markers(built, tmp_path, monkeypatch):
    root, _ = built
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    for doc in (readme, results):
        doc.write_text(f"# Title\nintro\n{page.GENERATED_BEGIN}\nstale\n{page.GENERATED_END}\nhistory\n")
    monkeypatch.chdir(root)
    report.rewrite_docs(plan(), [readme, results])
    for doc in (readme, results):
        text = doc.read_text()
        assert "stale" not in text and text.startswith("# Title\nintro\n") and text.endswith("\nhistory\n")
        assert "AdvMix's test_balanced error is 40.0% lower than nominal's" in text
    assert "| nominal | 0.300 | 0.200 |" in results.read_text()  # test_balanced error per seed
    assert "| nominal | 0.300 | 0.200 |" not in readme.read_text()  # README: the headline only
    # the benchmark section: the default and each experiment report of the current schema, one row each
    experiment = root / "reports" / "experiments" / "glasses"
    experiment.mkdir(parents=True)
    (experiment / "summary.json").write_text((root / "metrics" / "summary.json").read_text())
    results.write_text(results.read_text() + f"{page.VARIANTS_BEGIN}\nold\n{page.GENERATED_END}\ntail\n")
    report.rewrite_docs(plan(), [results])
    variants = results.read_text().split(page.VARIANTS_BEGIN, 1)[1]
    assert "old" not in variants and variants.endswith("\ntail\n") and "| nominal | 0.300 | 0.200 |" in results.read_text()
    assert "| default | " in variants and "| glasses | " in variants and "AdvMix vs colorjitter" in variants
    readme.write_text("no markers\n")
    with pytest.raises(report.ReportError, match="markers"):
        report.rewrite_docs(plan(), [results, readme])
    assert "| nominal | 0.300 | 0.200 |" in results.read_text()  # nothing written when one file is refused


def test_readme_and_docs_results_quote_the_committed_metrics():
    """The generated sections of README.md and docs/results.md are what `advmix report --docs README.md --docs
    docs/results.md` writes from the committed metrics: a quoted number cannot drift from metrics/."""
    from pathlib import Path

    from advmix.params import load_params

    root = Path(__file__).parents[1]
    p = load_params(root / "params.yaml")
    runs = report.read_runs(root, plan_of(p).runs)
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    for doc, blocks in (("README.md", page.headline_section(summary)),
                        ("docs/results.md", page.results_section(summary, runs))):
        text = (root / doc).read_text()
        generated = text.split(page.GENERATED_BEGIN, 1)[1].split(page.GENERATED_END, 1)[0].strip("\n")
        assert generated == markdown(blocks).strip("\n"), doc
    # the benchmark table: the default beside every committed experiment of the current schema
    variants = {"default": summary} | report.experiment_summaries(root)
    text = (root / "docs" / "results.md").read_text()
    generated = text.split(page.VARIANTS_BEGIN, 1)[1].split(page.GENERATED_END, 1)[0].strip("\n")
    assert generated == markdown(page.variants_section(variants)).strip("\n")


def test_the_report_embeds_only_files_that_a_stage_of_the_plan_writes_and_it_declares():
    """Every figure the report embeds is an out of the stage that draws it and a dep of the report; the report's
    own figures lie in its own out; the worst mixes are the worst-mixes stage's."""
    from pathlib import Path

    from advmix import paths

    root = Path(__file__).parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def names(entries):
        return {e if isinstance(e, str) else next(iter(e)) for e in entries}

    def outs(stage):
        spec = stages[stage]
        return names(spec.get("outs", [])) | names(spec.get("metrics", [])) | names(spec.get("plots", []))

    def covered(path, folders):
        return any(path == f or path.startswith(f"{f}/") for f in folders)

    deps = names(stages["report"]["deps"])
    for _, path, stage in report.STAGE_FIGURES:
        assert covered(path.as_posix(), outs(stage)), f"{path} is no out of {stage}"
        assert covered(path.as_posix(), deps), f"{path} is no dep of the report"
    assert covered(paths.WORST_MIXES.as_posix(), outs("worst-mixes"))
    assert covered(paths.WORST_MIXES.as_posix(), deps)
    for figure in (paths.SUMMARY_BY_GROUP, paths.SUMMARY_WORST_MIXES, report.SUMMARY_FOREST):
        assert covered(figure.as_posix(), outs("report"))
    assert not (root / "reports" / "sweep.png").exists()  # no stage draws it


def test_both_selection_rules_and_dfr_rows_with_the_labels_each_read(tmp_path):
    """Every run under each rule: the default rule's metrics are the run's; the other rule's are its own clean
    splits; a DFR run is planned by dfr.bases, measured clean and marked as reading val's group labels."""
    write_inputs(tmp_path, modes=("nominal", "advmix"), by_group=False, extras=False)
    with_dfr = plan(("nominal", "advmix"), bases=["nominal"])
    with pytest.raises(report.ReportError, match="dfr_nominal-s0, dfr_nominal-s1"):
        report.build_report(with_dfr, tmp_path)
    wg_rule = {("nominal", 0): 0.25, ("nominal", 1): 0.15, ("advmix", 0): 0.10, ("advmix", 1): 0.05,
               ("dfr_nominal", 0): 0.12, ("dfr_nominal", 1): 0.08}
    for (mode, seed), err in wg_rule.items():
        path = tmp_path / "metrics" / "eval" / f"{mode}-s{seed}.json"
        if mode == "dfr_nominal":
            write_eval(tmp_path, mode, seed, 0.15, 0.7, 0.1)
        body = json.loads(path.read_text())
        (run,) = body.values()
        run["group_labels_read"] = "val" if mode == "dfr_nominal" else "none"
        rest = {"n": 100, "avg_acc_train_weighted": 0.9, "ece": 0.05, "group_acc": {}}
        splits = {"test_iid": {"acc": 0.95, "error": 0.05, "worst_group_acc": 0.5, **rest},
                  "test_balanced": {"acc": 1 - err, "error": err, "worst_group_acc": 0.9 - err, **rest}}
        run["selection"] = {"label_free": {"epoch": 3}, "val_worst_group": {"epoch": seed, "splits": splits}}
        path.write_text(json.dumps(body))
    summary = report.build_report(with_dfr, tmp_path)
    sel = summary["selection"]["modes"]
    assert list(sel) == ["nominal", "advmix", "dfr_nominal"]
    assert sel["dfr_nominal"]["group_labels_in_training"] == "val" and sel["nominal"]["group_labels_in_training"] == "none"
    assert sel["nominal"]["label_free"]["test_balanced_error"] == pytest.approx(0.25)  # the run's own: (.3 + .2) / 2
    assert sel["nominal"]["val_worst_group"]["test_balanced_error"] == pytest.approx(0.20)  # (.25 + .15) / 2
    assert sel["advmix"]["val_worst_group"]["epochs"] == [0, 1]
    assert sel["advmix"]["val_worst_group"]["test_balanced_worst_group_acc_per_seed"] == pytest.approx([0.8, 0.85])
    gain = sel["advmix"]["val_worst_group"]["vs_nominal"]
    assert gain["relative_error_reduction"] == pytest.approx((0.20 - 0.075) / 0.20)
    assert list(summary["comparisons"]) == ["advmix_vs_nominal", "dfr_nominal_vs_nominal"]  # DFR is no control
    md = (tmp_path / "reports" / "summary.md").read_text()
    assert "## Model selection rules" in md and "| dfr_nominal | val | val_worst_group |" in md
    bad = tmp_path / "metrics" / "eval" / "advmix-s1.json"
    body = json.loads(bad.read_text())
    next(iter(body.values()))["selection"]["val_worst_group"]["splits"]["test_balanced"]["error"] = float("nan")
    bad.write_text(json.dumps(body))
    with pytest.raises(report.ReportError, match="advmix-s1.json: selection.val_worst_group"):
        report.build_report(with_dfr, tmp_path)


def test_the_pgd_columns_follow_the_epsilons_the_runs_were_attacked_at(tmp_path):
    """Changing evaluate.linf_epsilons changes the PGD columns instead of leaving n/a ones; summary.json has them."""
    from advmix.results import epsilon_label

    assert [epsilon_label(e) for e in (2 / 255, 8 / 255, 0.01)] == ["2/255", "8/255", "0.01"]
    write_inputs(tmp_path, modes=("nominal", "advmix"), by_group=False, extras=False)
    for path in (tmp_path / "metrics" / "eval").glob("*.json"):
        raw = json.loads(path.read_text())
        next(iter(raw.values()))["pgd_robust_acc"] = {"16/255": 0.25, "4/255": 0.5}
        path.write_text(json.dumps(raw))
    summary = report.build_report(plan(("nominal", "advmix")), tmp_path)
    assert summary["modes"]["advmix"]["pgd_robust_acc"] == {"4/255": 0.5, "16/255": 0.25}
    md = (tmp_path / "reports" / "summary.md").read_text()
    comparison = md[md.index("## Every metric"):md.index("## Model selection rules")]
    header = next(line for line in comparison.splitlines() if line.startswith("| mode |"))
    assert "PGD acc 4/255 | PGD acc 16/255" in header and "8/255" not in header
    assert "| **0.500 ± 0.000** | **0.250 ± 0.000** |" in comparison  # a tie: both modes are the best


def test_an_eval_file_of_the_previous_format_is_read(tmp_path):
    """Eval files written before the schema held PGD as linf_robust_acc_<k>: the report reads them as
    pgd_robust_acc["<k>/255"]; an unknown key is still refused."""
    write_inputs(tmp_path, modes=("nominal", "advmix"), by_group=False, extras=False)
    for path in (tmp_path / "metrics" / "eval").glob("*.json"):
        raw = json.loads(path.read_text())
        entry = next(iter(raw.values()))
        entry.pop("pgd_robust_acc")
        entry |= {"linf_robust_acc_2": 0.5, "linf_robust_acc_8": 0.1}
        path.write_text(json.dumps(raw))
    summary = report.build_report(plan(("nominal", "advmix")), tmp_path)
    assert summary["modes"]["nominal"]["pgd_robust_acc"] == {"2/255": 0.5, "8/255": 0.1}
    entry["linf_robust_acc_x"] = 0.3
    path.write_text(json.dumps(raw))
    with pytest.raises(report.ReportError, match="linf_robust_acc_x: unknown key"):
        report.build_report(plan(("nominal", "advmix")), tmp_path)


def test_the_bar_is_judged_on_the_mixes_training_makes_where_measured(tmp_path):
    """metrics/layers_as_trained.json decides the bar: a set that meets it on the generator's images but not with
    the residual is stated first as below it, with the residual as the cause; the variants table shows both."""
    write_inputs(tmp_path, modes=("nominal", "advmix"), by_group=False)
    (tmp_path / "metrics" / "layers_as_trained.json").write_text(json.dumps(
        {"residual": True, "label_change": 0.005, "spurious_transfer": 0.523, "pairs_differing_in_spurious": 200,
         "n": 512, "other_residual": {"label_change": 0.006, "spurious_transfer": 0.805}}))
    summary = report.build_report(plan(("nominal", "advmix")), tmp_path)
    pert = summary["perturbation_set"]
    assert pert["spurious_transfer"] == 0.869 and pert["as_trained"]["spurious_transfer"] == 0.523
    assert pert["meets_bar"] is False
    md = (tmp_path / "reports" / "summary.md").read_text()
    callout = next(line for line in md.splitlines() if "does NOT meet its bar" in line)
    assert "52.3%" in callout and "80.5%" in callout and "train.residual: false" in callout
    assert md.index(callout) < md.index("## All comparisons")
