"""The rho sweep: the queued commands, reading finished experiments, and the plot."""

from __future__ import annotations

import math

import pytest

from advmix.params import load_params
from advmix.sweep import SMALL, by_rho, collect, plot, queue_commands


def test_queue_commands_cover_every_rho_and_valid_overrides(tmp_path):
    commands = queue_commands((0.8, 0.99), small=True)
    assert [c[:5] for c in commands] == [["dvc", "exp", "run", "--queue", "-n"]] * 2
    assert commands[0][5] == "rho-0.8-small" and "data.rho=0.99" in commands[1]
    sets = [commands[0][i + 1] for i, a in enumerate(commands[0]) if a == "-S"]
    assert "train.modes=[nominal,advmix]" in sets and len(sets) == 2 + len(SMALL)
    # every override is a real param key with a valid value (as DVC would write it into params.yaml)
    overrides = {}
    for item in sets:
        key, value = item.split("=", 1)
        overrides[key] = value.strip("[]").split(",") if value.startswith("[") else value
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    p = load_params(tmp_path / "params.yaml", overrides)
    assert p.data.rho == 0.8 and p.train.modes == ["nominal", "advmix"] and p.data.sizes.train == 1000
    assert "gan.pretrained=models/gan/generator.pt" not in " ".join(queue_commands((0.9,), small=False)[0])


def row(name, rho, errors, dataset="synthfaces", typ="branch_commit"):
    out = {"Experiment": name, "typ": typ, "params.yaml:data.rho": rho, "params.yaml:data.name": dataset,
           "comparisons.advmix_vs_nominal.relative_error_reduction": 0.1}
    for seed, (nominal, advmix) in enumerate(errors):
        out[f"eval_nominal_s{seed}.splits.test_balanced.error"] = nominal
        out[f"eval_advmix_s{seed}.splits.test_balanced.error"] = advmix
    return out


def test_collect_reads_per_seed_errors_and_skips_unfinished(tmp_path):
    rows = [row("a", 0.9, [(0.2, 0.1), (0.1, 0.1)]), row("b", 0.99, [(0.0, 0.05)]),
            {"Experiment": "workspace", "params.yaml:data.rho": 0.95},
            row("running", 0.95, [("!", "!")]) | {"comparisons.advmix_vs_nominal.relative_error_reduction": "!"},
            row("queued", 0.8, [(0.3, 0.2)]) | {"State": "Queued"}]
    points = collect(rows)
    assert [(p["experiment"], p["rho"], p["seed"]) for p in points] == [("a", 0.9, 0), ("a", 0.9, 1), ("b", 0.99, 0)]
    assert points[0]["reduction"] == pytest.approx(0.5) and points[1]["reduction"] == 0.0
    assert math.isnan(points[2]["reduction"])  # nominal error 0: no relative reduction
    line = by_rho(points)
    assert [r["rho"] for r in line] == [0.9, 0.99]
    assert line[0]["reduction"] == pytest.approx((0.15 - 0.1) / 0.15)  # of the mean errors, not the mean ratio
    assert math.isnan(line[1]["reduction"])
    plot(points, tmp_path / "sweep.png", "test")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    old = row("old", 0.7, [(0.2, 0.1)]) | {"comparisons.advmix_vs_nominal.relative_error_reduction": "-",
                                          "advmix_vs_nominal.relative_error_reduction_balanced": 0.5}
    assert [p["experiment"] for p in collect([old])] == ["old"]  # finished under the summary's earlier key


def test_collect_keeps_experiments_of_the_dataset_newest_first():
    rows = [row(None, 0.95, [(0.1, 0.05)], typ="baseline"),  # the committed full-size pipeline: not a point
            row("rho-0.9-small", 0.9, [(0.2, 0.1)]), row("colordigits-small", 0.95, [(0.3, 0.1)], "colordigits"),
            row("rho-0.9-small", 0.9, [(0.4, 0.4)])]  # the same name on an older commit
    points = collect(rows, "synthfaces")
    assert [(p["experiment"], p["reduction"]) for p in points] == [("rho-0.9-small", pytest.approx(0.5))]
    assert len(collect(rows)) == 2  # any dataset
