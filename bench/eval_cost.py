"""The cost of `advmix evaluate` and what its attack settings change, on one trained classifier.

    python bench/eval_cost.py --mode advmix --seed 0      # in a project where `dvc repro train@advmix-0` ran

Evaluates the classifier once per variant of the evaluation-only knobs (the AdvMix attack's partners K and
steps S at evaluation strength, and the label-free val figure) and prints, per variant, the wall time and the
metrics that the knob can move. Clean metrics (test_balanced error, worst group) do not depend on these knobs;
the table shows them once as a check. Run it alone: a timing taken beside other torch work is not one.
"""

from __future__ import annotations

import argparse
import time

VARIANTS: dict[str, dict] = {
    "params.yaml": {},
    "K 16": {"evaluate.partners_k": 16},
    "S 3": {"evaluate.steps": 3},
    "K 16 S 3": {"evaluate.partners_k": 16, "evaluate.steps": 3},
    "no val figure": {"evaluate.val_robust_images": 0},
}


def main(argv: list[str] | None = None) -> list[dict]:
    import torch

    from advmix import paths
    from advmix.data import load_dataset
    from advmix.evaluate import evaluate_classifier
    from advmix.gan import checkpoints
    from advmix.mixing import resolve_layers
    from advmix.models import load_classifier
    from advmix.params import load_params
    from advmix.runtime import set_threads
    from advmix.stages.read_gan import split_latents

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="advmix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args(argv)

    set_threads()
    base = load_params(args.params)
    ds = load_dataset(paths.dataset_dir(base.data.name))
    G, _, _ = checkpoints.load_generator(paths.GENERATOR)
    layers = resolve_layers(base.mixing.layers, G.size, paths.LAYERS_METRICS)
    codes = {s: split_latents(ds, s, G) for s in ("test_balanced", "val")}
    model, _ = load_classifier(paths.classifier(args.mode, args.seed))
    rows = []
    for name in args.variants:
        p = load_params(args.params, VARIANTS[name])
        t0 = time.perf_counter()
        result, _ = evaluate_classifier(model, ds, p, torch.device("cpu"), G=G, latents=codes["test_balanced"],
                                        layers=layers, val_latents=codes["val"])
        seconds = time.perf_counter() - t0
        bal = result["splits"]["test_balanced"]
        rows.append({"variant": name, "seconds": round(seconds, 1), "test_balanced_error": bal["error"],
                     "semantic_robust_acc": result["semantic_robust_acc"],
                     "val_semantic_robust_acc": result.get("val_semantic_robust_acc"),
                     "pgd_robust_acc": result.get("pgd_robust_acc")})
        print(rows[-1], flush=True)
    print(f"{args.mode}-s{args.seed}, {torch.get_num_threads()} torch threads")
    for r in rows:
        print(f"  {r['variant']:14s} {r['seconds']:7.1f} s ({r['seconds'] / rows[0]['seconds']:.2f}x)  semantic "
              f"{r['semantic_robust_acc']:.4f}  val figure {r['val_semantic_robust_acc']}")
    return rows


if __name__ == "__main__":
    main()
