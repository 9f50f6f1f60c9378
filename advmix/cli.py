"""The `advmix` command: one subcommand per pipeline stage.

Heavy libraries are imported inside each command so that `advmix --help` stays fast.
Progress goes to stderr, results to stdout; any failure exits non-zero so DVC stops.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="advmix: adversarial mixing with disentangled representations. One command per stage.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file", dir_okay=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: -S data.rho=0.9")]


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _console().print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _overrides(items: list[str] | None) -> dict:
    """`-S key=value` options as {dotted key: YAML value}."""
    import yaml

    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--set {item!r}: expected KEY=VALUE", 2)
        parsed[key] = yaml.safe_load(value)
    return parsed


def _load(params_path: Path, overrides: list[str] | None = None):
    """Params or a clean exit naming the bad key."""
    from advmix.params import ParamsError, load_params

    try:
        return load_params(params_path, _overrides(overrides))
    except ParamsError as exc:
        raise _fail(str(exc), 2) from None


@contextmanager
def _progress(description: str, total: int):
    """A rich progress bar on a terminal; a line every 30 s in logs (DVC, Prefect, CI)."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = _console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        last = time.time()

        def step(n: int = 1, completed: int | None = None, info: str = "") -> None:
            nonlocal last
            bar.update(task, advance=None if completed is not None else n, completed=completed,
                       description=f"{description} {info}".strip())
            done = bar.tasks[0].completed
            if not console.is_terminal and (done >= total or time.time() - last > 30):
                console.print(f"{description}: {done:.0f}/{total} {info}", highlight=False)
                last = time.time()

        yield step


@app.command("params")
def params_cmd(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Print the resolved params (defaults filled in) as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(_load(params, set_).to_dict(), sort_keys=False), nl=False)


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Build the dataset named by data.name into data/<name>/."""
    from advmix import paths
    from advmix.data import DatasetError, build_dataset, save_dataset

    p = _load(params, set_)
    out = paths.dataset_dir(p.data.name)
    with _progress(f"prepare {p.data.name}", sum(p.data.sizes.as_dict().values())) as step:
        try:
            ds = build_dataset(p, progress=step)
        except DatasetError as exc:
            raise _fail(str(exc)) from None
    save_dataset(out, ds)
    counts = ds.manifest.groupby("split").size().to_dict()
    typer.echo(f"wrote {out}: {len(ds)} images {ds.images.shape[1:]} {counts}")


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the Great Expectations suites on the prepared dataset; exit 1 on any failed expectation."""
    from advmix import paths
    from advmix.validate import run_suites, write_outputs

    p = _load(params, set_)
    ds = _dataset(p)
    report = run_suites(ds, p)
    write_outputs(report, ds.info, paths.validation_dir(), paths.validation_metrics())
    for split, value in report.agreement.items():
        typer.echo(f"  {split:14s} agreement(label, {ds.info['spurious']}) = {value:.4f}")
    if not report.success:
        for f in report.failures:
            _console().print(f"[red]FAILED[/] {f.name} ({f.expectation}"
                             f"{', column ' + f.column if f.column else ''}): observed {f.observed}", highlight=False)
        raise _fail(f"data validation failed: {len(report.failures)} of {report.evaluated} expectations; "
                    f"see {paths.validation_dir() / 'index.html'}")
    typer.echo(f"validation passed: {report.evaluated} expectations")


def _dataset(p):
    from advmix import paths
    from advmix.data import DatasetError, load_dataset

    try:
        return load_dataset(paths.dataset_dir(p.data.name))
    except DatasetError as exc:
        raise _fail(str(exc)) from None


@app.command()
def probe(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train the attribute probe (label + every attribute) that measures generated and mixed images."""
    from advmix import paths
    from advmix.data.store import atomic_write_json
    from advmix.probes import save_probe, train_probe

    p = _load(params, set_)
    ds = _dataset(p)
    with _progress("probe", p.probe.epochs * max(1, p.data.sizes.train // p.probe.batch)) as step:
        model, metrics, _ = train_probe(ds.split("train"), ds.split("val"), p.probe.epochs, p.probe.batch,
                                        p.probe.lr, p.probe.width, p.seed, progress=step)
    save_probe(paths.PROBE, model, ds.images.shape[1], p.probe.width)
    atomic_write_json(paths.PROBE_METRICS, metrics)
    for k, v in metrics.items():
        typer.echo(f"  {k:34s} {v:.4f}")


@app.command("train-gan")
def train_gan_cmd(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train StyleGAN2 on the train split (or load gan.pretrained); write samples, mixing grid and quality."""
    import time

    from advmix import paths
    from advmix.data.store import atomic_write_json
    from advmix.figures import grid, save_png
    from advmix.gan import checkpoints
    from advmix.gan.train import mixing_grid, quality_metrics, sample_images, train_gan
    from advmix.mixing import layer_groups
    from advmix.probes import load_probe

    p = _load(params, set_)
    ds = _dataset(p)
    train = ds.split("train")
    t0 = time.time()
    if p.gan.pretrained is not None:
        try:
            G, w_avg, info = checkpoints.load_generator(p.gan.pretrained)
        except (checkpoints.CheckpointError, FileNotFoundError) as exc:
            raise _fail(str(exc)) from None
        if G.size != ds.images.shape[1]:
            raise _fail(f"gan.pretrained: {p.gan.pretrained} makes {G.size} px images but data.resolution is "
                        f"{ds.images.shape[1]}")
        run = {"iterations": 0, "seconds": 0.0, "images_per_s": 0.0, "pretrained": str(p.gan.pretrained)}
        config = info.get("config", {})
    else:
        paths.GAN_DIR.mkdir(parents=True, exist_ok=True)
        with _progress("train-gan", p.gan.iterations) as step:
            run = train_gan(train.images, p.gan, p.seed, paths.GAN_STATE, progress=lambda done, stats: step(
                completed=done, info=" ".join(f"{k} {v:.3f}" for k, v in stats.items())))
        if run["rank"] != 0:
            return
        G, w_avg, config = run.pop("G_ema"), run.pop("w_avg"), run.pop("config")
        checkpoints.save_generator(paths.GENERATOR, G, config, w_avg)
        run = {k: v for k, v in run.items() if k in ("iterations", "seconds", "images_per_s", "resumed_from")}
    save_png(grid(sample_images(G, 64, p.seed), ncol=8, scale=max(1, 96 // G.size)),
             paths.GAN_REPORTS / "samples.png")
    save_png(mixing_grid(G, layer_groups(G.size)["coarse"], 6, p.seed), paths.GAN_REPORTS / "mixing.png")
    quality = quality_metrics(G, load_probe(paths.PROBE), train, p.gan.eval_samples, p.seed)
    atomic_write_json(paths.GAN_METRICS, {"gan_" + k: v for k, v in run.items()} | quality)
    typer.echo(f"generator {paths.GENERATOR}: probe Fréchet distance {quality['probe_frechet_distance']:.3f} "
               f"(real halves {quality['probe_frechet_distance_real_halves']:.3f}), "
               f"mean attribute TV {quality['attribute_tv_mean']:.3f}, {time.time() - t0:.0f} s")


@app.command()
def extract(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Invert every split into W+ (encoder, then per-image refinement): latents, encoder, metrics and a grid.

    Writes data/latents/<split>.npy (row order = the split's manifest order) + info.json, models/encoder.pt,
    metrics/inversion.json (reconstruction and probe agreement, refined and encoder-only) and reports/inversion.png.
    """
    import time

    from advmix import paths
    from advmix.data.store import atomic_write_json
    from advmix.figures import grid, save_png
    from advmix.gan import checkpoints, invert
    from advmix.params import SPLITS
    from advmix.probes import load_probe, to_tensor

    p = _load(params, set_)
    ds = _dataset(p)
    try:
        G, w_avg, _ = checkpoints.load_generator(paths.GENERATOR)
        probe_model = load_probe(paths.PROBE)
    except (checkpoints.CheckpointError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if G.size != ds.images.shape[1]:
        raise _fail(f"{paths.GENERATOR} makes {G.size} px images but the dataset has {ds.images.shape[1]} px")
    splits = {name: part for name in SPLITS if len(part := ds.split(name))}
    if "train" not in splits:
        raise _fail("the dataset has no train split: the encoder is fine-tuned on it")
    t0 = time.time()
    with _progress("extract", invert.progress_total(p.extract, sum(len(s) for s in splits.values()))) as step:
        out = invert.extract(G, w_avg, probe_model, {k: s.images for k, s in splits.items()}, p.extract, p.seed,
                             progress=step)
    invert.save_latents(paths.LATENTS_DIR, out["latents"], {k: s.manifest for k, s in splits.items()},
                        extra={"n_latent": G.n_latent, "style_dim": G.style_dim, "mode": p.extract.mode,
                               "generator": str(paths.GENERATOR)})
    invert.save_encoder(paths.ENCODER, out["encoder"], extra={
        "seed": p.seed, "params": p.extract.model_dump(mode="json"), "losses": out["encoder_losses"]})
    metrics = out["metrics"]
    atomic_write_json(paths.INVERSION_METRICS, metrics)
    shown = "test_balanced" if "test_balanced" in splits else next(iter(splits))
    enc_rec, ref_rec = out["reconstructions"][shown]
    n = min(12, len(splits[shown]))
    save_png(grid(invert.comparison_images(to_tensor(splits[shown].images[:n]), enc_rec, ref_rec, n), ncol=n,
                  scale=max(1, 96 // G.size)), paths.INVERSION_FIGURE)
    for name in splits:
        m, e = metrics[name], metrics[name]["encoder_only"]
        typer.echo(f"  {name:14s} PSNR {m['psnr']:.2f} dB (encoder {e['psnr']:.2f}), label agreement "
                   f"{m['label_agreement']:.3f} (encoder {e['label_agreement']:.3f})")
    typer.echo(f"wrote {paths.LATENTS_DIR} ({sum(len(s) for s in splits.values())} images, "
               f"{metrics['images_per_s']:.1f} images/s), {paths.ENCODER}, {paths.INVERSION_METRICS}, "
               f"{paths.INVERSION_FIGURE}: {time.time() - t0:.0f} s")


@app.command("analyze-layers")
def analyze_layers(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Swap each W+ layer between random pairs; measure label change and nuisance transfer; pick `auto`."""
    import numpy as np
    import torch

    from advmix import paths
    from advmix.data.store import atomic_write_json
    from advmix.figures import save_figure
    from advmix.gan import checkpoints
    from advmix.gan.invert import load_latents
    from advmix.gan.layers import analyze, candidate_sets, heatmap, perturbation_on_bank
    from advmix.mixing import layer_groups
    from advmix.probes import load_probe

    p = _load(params, set_)
    ds = _dataset(p)
    G, _, _ = checkpoints.load_generator(paths.GENERATOR)
    probe_model = load_probe(paths.PROBE)
    gen = torch.Generator().manual_seed(p.seed)
    with torch.no_grad():
        ws = G.make_ws(torch.randn(p.mixing.analysis_pairs, G.style_dim, generator=gen))
    total = G.n_latent + len(layer_groups(G.size)) + len(candidate_sets(G.n_latent))
    with _progress("analyze-layers", total) as step:
        result = analyze(G, probe_model, ws, ds.info["spurious"], p.mixing.layers, p.mixing.partners,
                         p.mixing.max_label_change, p.mixing.min_transfer, p.seed, progress=step)
    result["source"] = "generated samples"
    # the same perturbation set on inverted real training faces, which is how training uses it
    train = ds.split("train")
    bank = load_latents(paths.latents_file("train"), train.manifest, G.n_latent, G.style_dim)
    rows = np.random.default_rng(p.seed).permutation(len(bank))[: p.mixing.analysis_pairs]
    result["perturbation"]["real"] = perturbation_on_bank(
        G, probe_model, torch.from_numpy(bank[rows]), train.manifest["label"].to_numpy()[rows], ds.info["spurious"],
        result["perturbation"]["layers"], p.mixing.partners, p.seed)
    atomic_write_json(paths.LAYERS_METRICS, result)
    save_figure(heatmap(result), paths.LAYERS_FIGURE)
    pert = result["perturbation"]
    typer.echo(f"auto layers {result['auto']}; perturbation set {pert['layers']} with partners={pert['partners']}: "
               f"label change {pert['label_change']:.3f}, {pert['spurious']} transfer {pert['spurious_transfer']:.3f} "
               f"(any partner: {pert['any_partner']['label_change']:.3f} / "
               f"{pert['any_partner']['spurious_transfer']:.3f}); on inverted real faces: label change "
               f"{pert['real']['label_change']:.3f}, transfer {pert['real']['spurious_transfer']:.3f}")


@app.command("train")
def train_cmd(
    mode: Annotated[str, typer.Option("--mode", help="nominal | randmix | advmix | linf")] = "nominal",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Train the classifier of one mode (the best val epoch is kept); a killed run resumes where it stopped.

    Writes models/classifier-<mode>.pt, the dvclive folder results/train/<mode>/ and metrics/train-<mode>.json.
    Several GPUs: `torchrun --nproc_per_node N $(which advmix) train --mode advmix`.
    """
    import time

    from advmix import paths
    from advmix.data.store import atomic_write_json
    from advmix.gan.invert import LatentsError
    from advmix.models import save_classifier
    from advmix.train import MIXING_MODES, MODES, STATE_FILE, evaluate, load_latents, train_classifier

    if mode not in MODES:
        raise _fail(f"--mode {mode!r}: expected one of {', '.join(MODES)}", 2)
    p = _load(params, set_)
    ds = _dataset(p)
    train, val = ds.split("train"), ds.split("val")
    G = latents = layers = None
    if mode in MIXING_MODES:
        from advmix.gan import checkpoints
        from advmix.mixing import resolve_layers

        try:
            G, _, _ = checkpoints.load_generator(paths.GENERATOR)
            if G.size != ds.images.shape[1]:
                raise _fail(f"{paths.GENERATOR} makes {G.size} px images but the dataset has {ds.images.shape[1]} px")
            layers = resolve_layers(p.mixing.layers, G.size, paths.LAYERS_METRICS)
            latents = load_latents(paths.LATENTS_DIR, train, "train", G.n_latent, G.style_dim)
        except (checkpoints.CheckpointError, LatentsError, FileNotFoundError, ValueError, KeyError) as exc:
            raise _fail(str(exc)) from None
    live_dir = paths.train_live_dir(mode)
    live_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with _progress(f"train {mode}", p.train.epochs * max(1, len(train) // p.train.batch)) as step:
        try:
            run = train_classifier(mode, train, val, p, live_dir / STATE_FILE, live_dir, G=G, latents=latents,
                                   layers=layers, progress=lambda done, total, s: step(
                                       completed=done, info=f"epoch {s['epoch']} loss {s['loss']:.3f}"))
        except (LatentsError, ValueError) as exc:
            raise _fail(str(exc)) from None
    if run["rank"] != 0:
        return
    model = run["model"]
    save_classifier(paths.classifier(mode), model, run["config"], extra={
        "mode": mode, "best_epoch": run["best_epoch"], "best_val_acc": run["best_val_acc"], "seed": p.seed,
        "layers": layers, "partners": p.mixing.partners if mode in MIXING_MODES else None})
    import torch

    device = torch.device(run["device"])
    model = model.to(device)
    out = {"best_epoch": run["best_epoch"], "epochs": run["epochs"], "seconds": round(run["seconds"], 2),
           "images_per_s": round(run["images_per_s"], 2), "resumed_from_epoch": run["resumed_from"]["epoch"]}
    for split in ("val", "test_iid", "test_balanced", "test_flipped"):
        part = ds.split(split)
        if len(part):
            for key, value in evaluate(model, part, p.train.eval_batch, device).items():
                out[f"{split}_{key}"] = value
    atomic_write_json(paths.train_metrics(mode), {f"train_{mode}": out})
    typer.echo(f"{paths.classifier(mode)}: best epoch {run['best_epoch'] + 1}/{run['epochs']}, "
               f"val acc {out['val_acc']:.4f}, test_balanced acc {out.get('test_balanced_acc', float('nan')):.4f} "
               f"(worst group {out.get('test_balanced_worst_group_acc', float('nan')):.4f}), "
               f"{time.time() - t0:.0f} s")


@app.command("run")
def run_cmd(
    stage: Annotated[list[str] | None, typer.Option(
        "--stage", help="a stage to run (repeatable; default: all); `train` means every train@<mode>")] = None,
    force: Annotated[bool, typer.Option("--force", help="run the stages even when DVC sees no change")] = False,
    set_: SetOpt = None,
) -> None:
    """Run the pipeline once as a Prefect flow: one task per DVC stage, in order. Run it from the project folder.

    -S overrides are checked, then written into params.yaml and left applied, like `dvc exp run -S`.
    Without PREFECT_API_URL, Prefect starts a temporary local server for the run.
    """
    import json
    import sys

    root = Path.cwd()
    _load(root / "params.yaml", set_)  # a bad key exits 2 before Prefect starts
    overrides = _overrides(set_)
    if not (root / "flows" / "pipeline.py").is_file():
        raise _fail(f"{root}: no flows/pipeline.py; run `advmix run` from the project folder", 2)
    if str(root) not in sys.path:  # flows/ sits next to advmix/ in the project folder
        sys.path.insert(0, str(root))
    from flows.pipeline import advmix_pipeline

    state = advmix_pipeline(stages=stage or None, force=force, params_overrides=overrides or None, root=str(root),
                            return_state=True)
    if not state.is_completed():
        raise _fail(f"pipeline {state.name.lower()}: {state.message}")
    typer.echo(json.dumps(state.result(), indent=2, default=str))


if __name__ == "__main__":
    app()
