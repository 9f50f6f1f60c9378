"""Do two commits give the same outputs? `dvc repro` of the same reduced params in a fresh clone of each, compared.

    python bench/same_outputs.py dfccbd6 HEAD                       # REDUCED below: every stage and mode
    python bench/same_outputs.py dfccbd6 HEAD -S 'train.seeds=[0,1]' --workdir /tmp/same

A refactor should change no output. This clones the repository at each commit into --workdir, sets the same
params in both (params.yaml, then REDUCED, then any -S), drops the committed dvc.lock and metrics/ so that every
stage runs, and runs `dvc repro` in one clone, then in the other, with this interpreter's `advmix` and `dvc` and
the clone first on PYTHONPATH (each clone runs its own code). It prints, per stage, the declared outputs whose
md5 differ (those under metrics/ and reports/ aside), then per metrics file the keys whose values differ (timings
and thread counts left out), and exits 1 when anything differs. Float kernels differ between CPU kinds: compare
on one machine, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from advmix.paths import METRICS, PARAMS, REPORTS

# every stage, all seven modes at one seed, both DFR refits and the report at the default's networks and 32 px;
# 1,122 s on a slow 2-core machine (2026-12-05)
REDUCED = {
    "data.sizes": {"train": 600, "val": 200, "test_iid": 200, "test_balanced": 400, "test_flipped": 200, "pool": 2000},
    "gan.iterations": 150, "gan.eval_samples": 200, "mixing.analysis_pairs": 512,
    "extract.encoder_steps": 150, "extract.encoder_real_steps": 50, "extract.refine_steps": 5,
    "train.seeds": [0], "train.epochs": 3, "train.jtt.epochs_first": 1,
    "evaluate.robust_images": 64, "evaluate.val_robust_images": 64, "evaluate.partners_k": 8, "evaluate.steps": 2,
    "evaluate.linf_steps": 3, "evaluate.worst_mixes": 8,
}
RUN_ONLY = ("seconds", "images_per_s", "torch_threads")  # metric keys that differ from run to run
TIMED = (f"{METRICS}/", f"{REPORTS}/")  # outputs compared key by key, not by md5


def flat(tree, prefix: str = "") -> dict[str, object]:
    """{'a.b.0': value} for every leaf of nested dicts and lists."""
    if isinstance(tree, dict | list):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        return {k: v for key, sub in items for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def lock_differences(a: dict, b: dict) -> dict[str, list[str]]:
    """Per stage of two parsed dvc.lock files: the outputs whose md5 differ ('<only in one>' for a missing stage).
    Outputs under metrics/ and reports/ are left to `metric_differences`: they carry timings."""
    stages_a, stages_b = a.get("stages", {}), b.get("stages", {})
    out = {}
    for stage in sorted(set(stages_a) | set(stages_b)):
        if stage not in stages_a or stage not in stages_b:
            out[stage] = ["<only in one>"]
            continue
        md5_a, md5_b = ({o["path"]: o.get("md5") for o in stages[stage].get("outs", [])
                         if not o["path"].startswith(TIMED)} for stages in (stages_a, stages_b))
        differ = sorted(p for p in set(md5_a) | set(md5_b) if md5_a.get(p) != md5_b.get(p))
        if differ:
            out[stage] = differ
    return out


def metric_differences(a: dict, b: dict) -> dict[str, tuple[object, object]]:
    """The leaf keys of two metrics files whose values differ, timings aside ('<absent>' where one lacks a key)."""
    fa, fb = flat(a), flat(b)
    pairs = {k: (fa.get(k, "<absent>"), fb.get(k, "<absent>")) for k in sorted(set(fa) | set(fb))
             if not any(word in k for word in RUN_ONLY)}
    nan = lambda v: isinstance(v, float) and math.isnan(v)  # NaN on both sides is no difference
    return {k: (x, y) for k, (x, y) in pairs.items() if x != y and not (nan(x) and nan(y))}


def reproduce(rev: str, folder: Path, overrides: dict[str, object]) -> float:
    """Clone this repository at `rev` into `folder`, apply `overrides`, `dvc repro`; returns its seconds."""
    from advmix.params import set_dotted

    root = Path(__file__).parents[1]
    subprocess.run(["git", "clone", "-q", str(root), str(folder)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=folder, check=True)
    params = yaml.safe_load((folder / PARAMS).read_text())
    for key, value in overrides.items():
        set_dotted(params, key, value)
    (folder / PARAMS).write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "rm", "-rq", "--ignore-unmatch", "dvc.lock", str(METRICS)], cwd=folder, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@advmix.invalid", "commit", "-qam",
                    "reduced params"], cwd=folder, check=True)  # dvclive wants a clean commit to refer to
    env = {**os.environ, "PYTHONPATH": str(folder), "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.time()
    with open(folder.parent / f"{folder.name}.log", "w") as log:
        subprocess.run(["dvc", "repro"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    from advmix.params import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("-S", "--set", dest="set_", action="append", help="a param on top of REDUCED: -S train.epochs=2")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/advmix-same-outputs"))
    args = ap.parse_args(argv)

    overrides = {**REDUCED, **parse_overrides(args.set_)}
    folders = [args.workdir / f"{side}-{rev.replace('/', '_')}" for side, rev in (("before", args.before),
                                                                                    ("after", args.after))]
    for folder in folders:
        if folder.exists():
            sys.exit(f"error: {folder} exists; remove it or pass another --workdir")
    args.workdir.mkdir(parents=True, exist_ok=True)
    for rev, folder in zip((args.before, args.after), folders, strict=True):
        print(f"{rev}: dvc repro in {folder} ({reproduce(rev, folder, overrides):.0f} s)", flush=True)
    a, b = folders
    locks = lock_differences(*(yaml.safe_load((f / "dvc.lock").read_text()) for f in folders))
    n_stages = len(yaml.safe_load((b / "dvc.lock").read_text())["stages"])
    print(f"\n{n_stages - len(locks)} of {n_stages} stages: every output outside {' and '.join(TIMED)} the same md5")
    for stage, paths in locks.items():
        print(f"  {stage}: differ {', '.join(paths)}")
    differing = 0
    for path in sorted({p.relative_to(f) for f in folders for p in (f / METRICS).rglob("*.json")}):
        if not ((a / path).exists() and (b / path).exists()):
            diff = {"file": ("present", "<absent>") if (a / path).exists() else ("<absent>", "present")}
        else:
            diff = metric_differences(json.loads((a / path).read_text()), json.loads((b / path).read_text()))
        if diff:
            differing += 1
            print(f"{path}: " + "; ".join(f"{k}: {x} -> {y}" for k, (x, y) in diff.items()))
    print(f"metrics files with a differing key: {differing}")
    return 1 if locks or differing else 0


if __name__ == "__main__":
    sys.exit(main())
