"""Train and evaluate modes x seeds in one process, as the train and evaluate stages do, on any device.

    python bench/seed_spread.py --modes nominal advmix --seeds 0 1 2 3 4 5 --device cuda

Uses the committed pipeline's outputs (data/, data/latents/, models/gan/generator.pt, metrics/layers.json) and
params.yaml (plus -S overrides; under mixing.bank: pool, the pool partners extract inverted), writes nothing to the project, and prints per-seed test_balanced error,
worst-group and robust accuracies, then mean and std per mode. For how much the seed moves a comparison:
on a GPU, six seeds of nominal and AdvMix take about three minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    import torch
    import yaml

    from advmix.inputs.data import dataset
    from advmix.inputs.gan import mixing_inputs, partner_bank, split_latents
    from advmix.metrics import EvalConfig, evaluate_classifier, val_selection
    from advmix.modes import MIXING_MODES
    from advmix.modes import NAMES as MODES
    from advmix.params import POOL, load_params
    from advmix.runtime import pick_device, set_threads
    from advmix.stages.train import fit, train_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["nominal", "advmix"], choices=MODES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[], help="a params override, key=value")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--val-only", action="store_true",
                    help="only the label-free val figure (for choosing hyperparameters): no test split is read")
    ap.add_argument("--no-attack", action="store_true",
                    help="with --val-only: skip the val attack; the rows keep val accuracy and worst-group accuracy")
    args = ap.parse_args(argv)

    overrides = dict(item.split("=", 1) for item in [f"train.device={args.device}", *args.sets])
    p = load_params(Path("params.yaml"), {k: yaml.safe_load(v) for k, v in overrides.items()})
    if args.val_only and not args.no_attack and p.evaluate.val_robust_images == 0:
        sys.exit("--val-only: evaluate.val_robust_images is 0, so there is no val figure; add "
                 "-S evaluate.val_robust_images=256 (docs/selection.md)")
    set_threads()
    ds = dataset(p)
    train, val = ds.split("train"), ds.split("val")
    G, layers, w_train = mixing_inputs(p, ds, "train")
    w_balanced, w_val = split_latents(ds, "test_balanced", G), split_latents(ds, "val", G)
    # under mixing.bank: pool, training and the val figure draw their partners from the pool (as the stages do)
    partners = partner_bank(p, ds, G, w_train) if p.mixing.bank == POOL else None
    val_partners = partner_bank(p, ds, G, w_val) if p.mixing.bank == POOL else None
    device = pick_device(args.device)
    cfg = EvalConfig(p.evaluate, p.train, p.mixing.partners, p.seed)
    rows = []
    for seed in args.seeds:
        for mode in args.modes:
            mixing = mode in MIXING_MODES
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:  # the classifier's seed; the attacks keep params' seed
                config = train_config(p.model_copy(update={"seed": seed}), layers if mixing else None)
                run = fit(mode, train, val, config, Path(tmp) / "state.pt", None, G=G if mixing else None,
                          latents=w_train if mixing else None, partners=partners if mixing else None)
            t1 = time.time()
            if args.val_only:
                result = {} if args.no_attack else val_selection(run.model, val, w_val, G, layers, cfg, device,
                                                                 val_partners)
                bal = {"error": float("nan"), "worst_group_acc": float("nan")}
            else:
                result, _ = evaluate_classifier(run.model, ds, cfg, device, G=G, latents=w_balanced, layers=layers,
                                                val_latents=w_val, val_partners=val_partners)
                bal = result["splits"]["test_balanced"]
            rows.append({"mode": mode, "seed": seed, "error": bal["error"], "worst_group_acc": bal["worst_group_acc"],
                         "semantic_robust_acc": result.get("semantic_robust_acc"),
                         "val_semantic_robust_acc": result.get("val_semantic_robust_acc"),
                         "best_epoch": run.best_epoch, "train_s": round(t1 - t0, 1),
                         # the epoch the val_worst_group rule keeps, and its val figures
                         "val_worst_group_epoch": run.best_epochs["val_worst_group"],
                         **{f"val_worst_group_rule_{k.removeprefix('val/')}": v for k, v in
                            run.history[run.best_epochs["val_worst_group"]].items()
                            if k in ("val/acc", "val/worst_group_acc")},
                         "eval_s": round(time.time() - t1, 1)})
            print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'mode':9s} {'error mean':>10s} {'std':>7s} {'worst grp':>9s} {'semantic':>9s} {'val sel.':>9s}")
    summary = {}
    for mode in args.modes:
        mine = [r for r in rows if r["mode"] == mode]
        errors = [r["error"] for r in mine if r["error"] == r["error"]]  # none with --val-only (NaN)
        summary[mode] = {"error": statistics.mean(errors) if errors else float("nan"),
                         "error_std": statistics.stdev(errors) if len(errors) > 1 else float("nan")}
        for key in ("worst_group_acc", "semantic_robust_acc", "val_semantic_robust_acc"):
            values = [r[key] for r in mine if r[key] is not None]
            summary[mode][key] = statistics.mean(values) if values else float("nan")
        s = summary[mode]
        print(f"{mode:9s} {s['error']:10.4f} {s['error_std']:7.4f} {s['worst_group_acc']:9.3f} "
              f"{s['semantic_robust_acc']:9.3f} {s['val_semantic_robust_acc']:9.3f}")
    out = {"device": name, "torch": torch.__version__, "rows": rows, "summary": summary}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
