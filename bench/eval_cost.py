"""The cost of `advmix evaluate` and what its attack settings change, on one trained classifier.

    python bench/eval_cost.py --mode advmix --seed 0      # in a project where `dvc repro train@advmix-0` ran
    python bench/eval_cost.py --random                    # anywhere: cost only, on random networks

Evaluates the classifier once per variant of the evaluation-only knobs (the AdvMix attack's partners K and
steps S at evaluation strength, and the label-free val figure) and prints, per variant, the wall time and the
metrics that the knob can move. Clean metrics (test_balanced error, worst group) do not depend on these knobs;
the table shows them once as a check. Run it alone: a timing taken beside other torch work is not one.

`--random` needs no trained project: it builds params.yaml's labelled splits (no pool), a generator of the
`gan.*` config and a classifier of the `train.*` config with random weights, and random codes from that generator's
mapping; the mixing rows are params.yaml's (`auto`: metrics/layers.json). The times are the evaluation's cost on
this machine; the metrics of random networks mean nothing.
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
    from advmix.gan import checkpoints
    from advmix.inputs.gan import split_latents
    from advmix.metrics import EvalConfig, evaluate_classifier
    from advmix.mixing import resolve_layers
    from advmix.models import load_classifier
    from advmix.params import load_params
    from advmix.runtime import set_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="advmix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--random", action="store_true", help="random networks and codes: cost only, no project needed")
    args = ap.parse_args(argv)

    set_threads()
    base = load_params(args.params)
    if args.random:
        ds, G, codes, model = random_setup(args.params)
    else:
        ds = load_dataset(paths.dataset_dir(base.data.name))
        G, _, _ = checkpoints.load_generator(paths.GENERATOR)
        codes = {s: split_latents(ds, s, G) for s in ("test_balanced", "val")}
        model, _ = load_classifier(paths.classifier(args.mode, args.seed))
    layers = resolve_layers(base.mixing.layers, G.size, paths.LAYERS_METRICS)
    rows = []
    for name in args.variants:
        p = load_params(args.params, VARIANTS[name])
        t0 = time.perf_counter()
        cfg = EvalConfig(p.evaluate, p.train, p.mixing.partners, p.seed)
        result, _ = evaluate_classifier(model, ds, cfg, torch.device("cpu"), G=G, latents=codes["test_balanced"],
                                        layers=layers, val_latents=codes["val"])
        seconds = time.perf_counter() - t0
        bal = result["splits"]["test_balanced"]
        rows.append({"variant": name, "seconds": round(seconds, 1), "test_balanced_error": bal["error"],
                     "semantic_robust_acc": result["semantic_robust_acc"],
                     "val_semantic_robust_acc": result.get("val_semantic_robust_acc"),
                     "pgd_robust_acc": result.get("pgd_robust_acc")})
        print(rows[-1], flush=True)
    print(f"{'random networks' if args.random else f'{args.mode}-s{args.seed}'}, {torch.get_num_threads()} torch "
          f"threads")
    for r in rows:
        print(f"  {r['variant']:14s} {r['seconds']:7.1f} s ({r['seconds'] / rows[0]['seconds']:.2f}x)  semantic "
              f"{r['semantic_robust_acc']:.4f}  val figure {r['val_semantic_robust_acc']}")
    return rows


def random_setup(params_path: str):
    """The params file's labelled splits, and a generator, codes and classifier of its configs, random weights."""
    import torch

    from advmix.data.build import build_dataset
    from advmix.gan.networks import Generator
    from advmix.gan.training import generator_config
    from advmix.models import build_model
    from advmix.params import load_params

    p = load_params(params_path, {"data.sizes.pool": 0, "gan.data": "train"})
    ds = build_dataset(p)
    torch.manual_seed(p.seed)
    G = Generator(**generator_config(p.gan, p.data.resolution)).eval().requires_grad_(False)
    codes = {}
    for split in ("test_balanced", "val"):
        with torch.no_grad():
            codes[split] = G.make_ws(torch.randn(len(ds.split(split)), G.style_dim)).numpy()
    model = build_model(p.train.model, int(ds.info.get("n_classes", 2)), p.data.resolution, p.train.width)
    return ds, G, codes, model.eval()


if __name__ == "__main__":
    main()
