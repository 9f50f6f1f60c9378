"""The `advmix` command: one subcommand per pipeline stage.

Heavy libraries are imported inside each command so that `advmix --help` stays fast.
Progress goes to stderr, results to stdout; any failure exits non-zero so DVC stops.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer

from advmix.modes import NAMES as MODE_NAMES  # a leaf module: no torch

app = typer.Typer(help="advmix: adversarial mixing with disentangled representations. One command per stage.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file", dir_okay=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: -S data.rho=0.9")]
_command: str | None = None  # the subcommand being run, for _load


@app.callback()
def _subcommand(ctx: typer.Context) -> None:
    global _command
    _command = ctx.invoked_subcommand


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # an error stays one line however narrow the terminal


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
    """Params or a clean exit naming the bad key; a torch stage then takes its share of the CPU cores."""
    from advmix.params import ParamsError, load_params
    from advmix.runtime import set_threads

    try:
        loaded = load_params(params_path, _overrides(overrides))
    except ParamsError as exc:
        raise _fail(str(exc), 2) from None
    # no torch work in these (run and sweep start other advmix processes, which count themselves)
    if _command not in ("params", "prepare", "validate", "run", "sweep"):
        set_threads()
    return loaded


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

        def step(n: int = 1, completed: int | None = None, info: str = "", of: int | None = None) -> None:
            nonlocal last, total
            total = of or total
            bar.update(task, advance=None if completed is not None else n, completed=completed, total=total,
                       description=f"{description} {info}".strip())
            done = bar.tasks[0].completed
            if not console.is_terminal and (done >= total or time.time() - last > 30):
                console.print(f"{description}: {done:.0f}/{total} {info}", highlight=False)
                last = time.time()

        yield step


@app.command("params")
def params_cmd(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    profile: Annotated[str | None, typer.Option(help="start from profiles/NAME.yaml (cpu, gpu, celeba-gpu) or a file")
                       ] = None,
    write: Annotated[bool, typer.Option("--write", help="write the result to --params instead of printing it")] = False,
) -> None:
    """The resolved params, every key filled in: printed, or written in full with --write (what DVC needs).

    The source is --profile when given, else the params file; -S overrides apply on top. Written files keep the
    comments of profiles/cpu.yaml."""
    from advmix.data.store import atomic_write_bytes
    from advmix.params import PROFILES_DIR, TEMPLATE_PROFILE, ParamsError, load_profile, profile_path, render_params

    template = Path(PROFILES_DIR) / f"{TEMPLATE_PROFILE}.yaml"
    try:
        source = profile_path(profile) if profile else params
        resolved = load_profile(profile, _overrides(set_)) if profile else _load(params, set_)
    except ParamsError as exc:
        raise _fail(str(exc), 2) from None
    text = render_params(resolved, template.read_text() if template.is_file() else None)
    if profile and not (template.is_file() and source.resolve() == template.resolve()):
        text = f"# written by `advmix params --profile {profile} --write`: {source} over {template}\n" + text
    if not write:
        typer.echo(text, nl=False)
        return
    atomic_write_bytes(params, text.encode())
    _console().print(f"wrote {params}: {source}{' with ' + ', '.join(set_) if set_ else ''}", highlight=False)


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
    # a measuring instrument learns best where the attributes are independent: in the pool, when there is one
    # (a probe taught on the skewed train split reads skin tone as part of the smile)
    pool = ds.split("pool")
    source = pool if len(pool) else ds.split("train")
    with _progress("probe", p.probe.epochs * max(1, len(source) // p.probe.batch)) as step:
        model, metrics, _ = train_probe(source, ds.split("val"), p.probe.epochs, p.probe.batch,
                                        p.probe.lr, p.probe.width, p.seed, progress=step)
    save_probe(paths.PROBE, model, ds.images.shape[1], p.probe.width)
    atomic_write_json(paths.PROBE_METRICS, metrics)
    for k, v in metrics.items():
        typer.echo(f"  {k:34s} {v:.4f}")


@app.command("train-gan")
def train_gan_cmd(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train StyleGAN2 on `gan.data` (the unlabelled pool by default) or load gan.pretrained; write samples, mixing
    grid and quality."""
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
    train = _generator_data(p, ds)
    t0 = time.time()
    if p.gan.pretrained is not None:
        try:
            G, w_avg, _ = checkpoints.load_generator(p.gan.pretrained)
        except (checkpoints.CheckpointError, FileNotFoundError) as exc:
            raise _fail(str(exc)) from None
        if G.size != ds.images.shape[1]:
            raise _fail(f"gan.pretrained: {p.gan.pretrained} makes {G.size} px images but data.resolution is "
                        f"{ds.images.shape[1]}")
        run = {"iterations": 0, "seconds": 0.0, "images_per_s": 0.0, "pretrained": str(p.gan.pretrained)}
        checkpoints.save_generator(paths.GENERATOR, G, {}, w_avg)  # what every later stage reads
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
        run |= {"data": p.gan.data, "images": len(train)}
    save_png(grid(sample_images(G, 64, p.seed), ncol=8, scale=max(1, 96 // G.size)),
             paths.GAN_SAMPLES)
    save_png(mixing_grid(G, layer_groups(G.size)["coarse"], 6, p.seed), paths.GAN_MIXING)
    quality = quality_metrics(G, load_probe(paths.PROBE), train, p.gan.eval_samples, p.seed)
    atomic_write_json(paths.GAN_METRICS, {"gan_" + k: v for k, v in run.items()} | quality)
    typer.echo(f"generator {paths.GENERATOR}: probe Fréchet distance {quality['probe_frechet_distance']:.3f} "
               f"(real halves {quality['probe_frechet_distance_real_halves']:.3f}), "
               f"mean attribute TV {quality['attribute_tv_mean']:.3f}, {time.time() - t0:.0f} s")


def _generator_data(p, ds):
    """The split the generator and the encoder learn from (`gan.data`); its labels are never read."""
    part = ds.split(p.gan.data)
    if not len(part):
        raise _fail(f"gan.data: the dataset has no {p.gan.data!r} images; set data.sizes.pool > 0 and rerun "
                    "`advmix prepare`, or set gan.data: train")
    return part


@app.command()
def extract(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Invert every labelled split into W+ (encoder, then per-image refinement): latents, encoder, metrics, a grid.

    The encoder is fine-tuned on real images of `gan.data`, the split the generator learnt from.

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
        raise _fail("the dataset has no train split: its codes are the partners of every mix")
    t0 = time.time()
    with _progress("extract", invert.progress_total(p.extract, sum(len(s) for s in splits.values()))) as step:
        out = invert.extract(G, w_avg, probe_model, {k: s.images for k, s in splits.items()}, p.extract, p.seed,
                             encoder_images=_generator_data(p, ds).images, progress=step)
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
    """Swap each W+ layer between random pairs of inverted train faces; measure label change and nuisance
    transfer; pick `auto`."""
    import numpy as np
    import torch

    from advmix import paths
    from advmix.data.store import atomic_write_json
    from advmix.figures import save_figure
    from advmix.gan import checkpoints
    from advmix.gan.invert import load_latents
    from advmix.gan.layers import analyze, candidate_sets, heatmap, perturbation_on_bank, read
    from advmix.mixing import layer_groups
    from advmix.probes import load_probe

    p = _load(params, set_)
    ds = _dataset(p)
    G, _, _ = checkpoints.load_generator(paths.GENERATOR)
    probe_model = load_probe(paths.PROBE)
    # measured on inverted real training faces, which is what training mixes: a small generator draws its own
    # samples' mouths less clearly than it reconstructs real ones, so on generated pairs the probe's label noise
    # hides a set that keeps the label on real faces (rows 0-1 of the 32 px default: label change 0.23 on
    # generated pairs, 0.06 on inverted real ones)
    train = ds.split("train")
    bank = load_latents(paths.latents_file("train"), train.manifest, G.n_latent, G.style_dim)
    rows = np.random.default_rng(p.seed).permutation(len(bank))[: p.mixing.analysis_pairs]
    ws, labels = torch.from_numpy(bank[rows]), train.manifest["label"].to_numpy()[rows]
    greedy = G.n_latent * (G.n_latent + 1) // 2  # at most; the search usually stops after a few rows
    total = G.n_latent + len(layer_groups(G.size)) + len(candidate_sets(G.n_latent)) + greedy
    with _progress("analyze-layers", total) as step:
        result = analyze(G, probe_model, ws, ds.info["spurious"], p.mixing.layers, p.mixing.partners,
                         p.mixing.max_label_change, p.mixing.min_transfer, p.seed, labels=labels, progress=step)
        step(completed=total)
    result["source"] = "inverted real train faces"
    held = slice(result["n_search"], None)  # the half the search did not read
    result["perturbation"]["real"] = perturbation_on_bank(
        G, probe_model, ws[held], labels[held], ds.info["spurious"], result["perturbation"]["layers"],
        p.mixing.partners, p.seed)
    # the same set on generated samples, for comparison
    gen = torch.Generator().manual_seed(p.seed)
    with torch.no_grad():
        ws_gen = G.make_ws(torch.randn(p.mixing.analysis_pairs, G.style_dim, generator=gen))
    result["perturbation"]["generated"] = perturbation_on_bank(
        G, probe_model, ws_gen, read(G, probe_model, ws_gen)["label"], ds.info["spurious"],
        result["perturbation"]["layers"], p.mixing.partners, p.seed)
    atomic_write_json(paths.LAYERS_METRICS, result)
    save_figure(heatmap(result), paths.LAYERS_FIGURE)
    pert = result["perturbation"]
    typer.echo(f"auto layers {result['auto']}; perturbation set {pert['layers']} with partners={pert['partners']}: "
               f"label change {pert['label_change']:.3f}, {pert['spurious']} transfer {pert['spurious_transfer']:.3f} "
               f"(any partner: {pert['any_partner']['label_change']:.3f} / "
               f"{pert['any_partner']['spurious_transfer']:.3f}); on inverted real faces: label change "
               f"{pert['real']['label_change']:.3f}, transfer {pert['real']['spurious_transfer']:.3f}")
    warning = whole_code_warning(pert["layers"], G.n_latent, pert["partners"])
    if warning:
        typer.echo(f"warning: {warning}", err=True)


def whole_code_warning(layers: list[int], n_latent: int, partners: str) -> str | None:
    """A perturbation set that swaps every W+ row is not a nuisance change: say so (colordigits at 2,500 iterations
    did this, and AdvMix then had no effect)."""
    if len(set(layers)) < n_latent:
        return None
    what = "another image of the same class" if partners == "same_label" else "the partner's image, label included"
    return (f"the perturbation set swaps all {n_latent} W+ rows, so a hard mix is {what}, not a nuisance change: "
            "this generator has not put the spurious attribute in rows of its own (train it longer, or raise "
            "gan.style_mixing), and AdvMix cannot target it")


SeedOpt = Annotated[int | None, typer.Option("--seed", help="training seed of the classifier (default: `seed`)")]


def _mixing_inputs(p, ds, split: str):
    """The generator, the resolved mixing layers and one split's W+ codes, or a clear exit."""
    from advmix import paths
    from advmix.gan import checkpoints
    from advmix.mixing import resolve_layers

    try:
        G, _, _ = checkpoints.load_generator(paths.GENERATOR)
        if G.size != ds.images.shape[1]:
            raise _fail(f"{paths.GENERATOR} makes {G.size} px images but the dataset has {ds.images.shape[1]} px")
        layers = resolve_layers(p.mixing.layers, G.size, paths.LAYERS_METRICS)
    except (checkpoints.CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
        raise _fail(str(exc)) from None
    return G, layers, _split_latents(ds, split, G)


def _split_latents(ds, split: str, G):
    """One split's W+ codes, checked against the split and the generator, or a clear exit."""
    from advmix import paths
    from advmix.gan.invert import LatentsError
    from advmix.train import load_latents

    try:
        return load_latents(paths.LATENTS_DIR, ds.split(split), split, G.n_latent, G.style_dim)
    except (LatentsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _mode(mode: str) -> str:
    if mode not in MODE_NAMES:
        raise _fail(f"--mode {mode!r}: expected one of {', '.join(MODE_NAMES)}", 2)
    return mode


def _require_a_commit() -> None:
    """dvclive, train's per-epoch log, reads git's HEAD: in a repository without a commit it fails deep inside
    (scmrepo's "Empty git repo"). Say so before any work. Outside git, or without git, dvclive needs nothing."""
    import subprocess

    try:
        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, check=False)
        head = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], capture_output=True, check=False)
    except FileNotFoundError:
        return
    if inside.returncode == 0 and head.returncode != 0:
        raise _fail("this git repository has no commit yet, and dvclive (train's per-epoch log) needs one: "
                    "run `git add -A && git commit -m start` once, then rerun")


@app.command("train")
def train_cmd(
    mode: Annotated[str, typer.Option("--mode", help=" | ".join(MODE_NAMES))] = "nominal",
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Train the classifier of one mode and seed (the best val epoch is kept); a killed run resumes.

    Writes models/classifier-<mode>-s<seed>.pt, the dvclive folder results/train/<mode>-s<seed>/ and
    metrics/train/<mode>-s<seed>.json. Several GPUs: `torchrun --nproc_per_node N $(which advmix) train ...`.
    """
    import time

    from advmix import paths
    from advmix.data.store import atomic_folder, atomic_write_json
    from advmix.gan.invert import LatentsError
    from advmix.models import save_classifier
    from advmix.modes import MIXING_MODES
    from advmix.runtime import distributed
    from advmix.train import evaluate, train_classifier, train_jtt

    mode = _mode(mode)
    p = _load(params, set_)
    seed = p.seed if seed is None else seed
    p = p.model_copy(update={"seed": seed})  # the classifier's seed; the data and the GAN keep theirs
    if distributed()[0] == 0:
        _require_a_commit()
    ds = _dataset(p)
    train, val = ds.split("train"), ds.split("val")
    G = latents = layers = None
    if mode in MIXING_MODES:
        G, layers, latents = _mixing_inputs(p, ds, "train")
    state = paths.train_state(mode, seed)
    state.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # dvclive writes into a temp folder that replaces the old one only on success: a failed run loses nothing
    live = atomic_folder(paths.train_live_dir(mode, seed)) if distributed()[0] == 0 else nullcontext()
    with _progress(f"train {mode} seed {seed}", p.train.epochs * max(1, len(train) // p.train.batch)) as step:
        try:
            def progress(done: int, total: int, s: dict[str, float]) -> None:
                step(completed=done, of=total, info=f"epoch {s['epoch']} loss {s['loss']:.3f}")

            with live as live_dir:
                if mode == "jtt":
                    run = train_jtt(train, val, p, state, live_dir, progress=progress)
                else:
                    run = train_classifier(mode, train, val, p, state, live_dir, G=G, latents=latents, layers=layers,
                                           progress=progress)
        except (LatentsError, ValueError) as exc:
            raise _fail(str(exc)) from None
    if run["rank"] != 0:
        return
    model = run["model"]
    save_classifier(paths.classifier(mode, seed), model, run["config"], extra={
        "mode": mode, "best_epoch": run["best_epoch"], "best_val_acc": run["best_val_acc"], "seed": seed,
        "layers": layers, "partners": p.mixing.partners if mode in MIXING_MODES else None})
    import torch

    device = torch.device(run["device"])
    model = model.to(device)
    out = {"best_epoch": run["best_epoch"], "epochs": run["epochs"], "seconds": round(run["seconds"], 2),
           "images_per_s": round(run["images_per_s"], 2), "resumed_from_epoch": run["resumed_from"]["epoch"],
           "torch_threads": torch.get_num_threads()}  # CPU results are bitwise reproducible at the same count
    for split in ("val", "test_iid", "test_balanced", "test_flipped"):
        part = ds.split(split)
        if len(part):
            for key, value in evaluate(model, part, p.train.eval_batch, device).items():
                out[f"{split}_{key}"] = value
    atomic_write_json(paths.train_metrics(mode, seed), {f"train_{mode}_s{seed}": out})
    typer.echo(f"{paths.classifier(mode, seed)}: best epoch {run['best_epoch'] + 1}/{run['epochs']}, "
               f"val acc {out['val_acc']:.4f}, test_balanced acc {out.get('test_balanced_acc', float('nan')):.4f} "
               f"(worst group {out.get('test_balanced_worst_group_acc', float('nan')):.4f}), "
               f"{time.time() - t0:.0f} s")


@app.command("evaluate")
def evaluate_cmd(
    mode: Annotated[str, typer.Option("--mode", help="the trained mode to evaluate")] = "nominal",
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Evaluate one classifier: accuracy, group and fairness metrics, ECE, semantic and pixel robustness.

    Writes metrics/eval/<mode>-s<seed>.json and results/eval/<mode>-s<seed>/by_group.csv. The attacks draw from
    `seed` (not the classifier's seed), so every classifier meets the same test images and partners.
    """
    import time

    import pandas as pd
    import torch

    from advmix import paths
    from advmix.data.store import atomic_write_bytes, atomic_write_json
    from advmix.evaluate import evaluate_classifier
    from advmix.models import load_classifier
    from advmix.modes import GROUP_LABEL_MODES
    from advmix.runtime import pick_device

    mode = _mode(mode)
    p = _load(params, set_)
    seed = p.seed if seed is None else seed
    ds = _dataset(p)
    path = paths.classifier(mode, seed)
    try:
        model, _ = load_classifier(path)
    except FileNotFoundError:
        raise _fail(f"{path}: no such classifier; run `advmix train --mode {mode} --seed {seed}` first") from None
    except ValueError as exc:  # a broken file
        raise _fail(str(exc)) from None
    device = pick_device(p.train.device, "train.device")
    G = latents = val_latents = layers = None
    if paths.GENERATOR.is_file() and paths.latents_file("test_balanced").is_file():
        G, layers, latents = _mixing_inputs(p, ds, "test_balanced")
        if paths.latents_file("val").is_file():
            val_latents = _split_latents(ds, "val", G)
    t0 = time.time()
    result, by_group = evaluate_classifier(model, ds, p, device, G=G, latents=latents, layers=layers,
                                           val_latents=val_latents)
    result = {"mode": mode, "seed": seed, "uses_group_labels": mode in GROUP_LABEL_MODES} | result
    result["torch_threads"] = torch.get_num_threads()  # CPU results are bitwise reproducible at the same count
    name = paths.run_name(mode, seed)
    atomic_write_bytes(paths.eval_by_group(mode, seed),
                       pd.DataFrame(by_group).to_csv(index=False).encode())
    atomic_write_json(paths.eval_metrics(mode, seed), {f"eval_{name.replace('-', '_')}": result})
    bal = result["splits"].get("test_balanced", {})
    typer.echo(f"{name}: test_balanced error {bal.get('error', float('nan')):.4f}, worst group "
               f"{bal.get('worst_group_acc', float('nan')):.4f}, semantic robust acc "
               f"{result.get('semantic_robust_acc')}, mix change error {result.get('mix_change_error')}, val robust "
               f"acc (selection) {result.get('val_semantic_robust_acc')}, "
               f"{time.time() - t0:.0f} s")


@app.command("report")
def report_cmd(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="a partial report when planned runs lack "
                                                "their evaluation (it says so)")] = False,
    results_doc: Annotated[Path | None, typer.Option("--results-doc", help="only rewrite the generated section of "
                                                     "this file (docs/results.md) from metrics/summary.json and "
                                                     "metrics/eval/; the report is left as it is", dir_okay=False)
                           ] = None,
) -> None:
    """The comparison of every mode: reports/summary.md, a self-contained reports/summary.html, metrics/summary.json.

    Reads metrics/eval/ and results/eval/ (the evaluate stages), the earlier stages' figures and metrics, and
    shows the AdvMix mixes that hurt the nominal model of `seed` most, with the AdvMix model's answers beside.
    """
    import io

    import numpy as np

    from advmix import paths
    from advmix.data.store import atomic_write_bytes
    from advmix.report import build_report

    p = _load(params, set_)
    if results_doc is not None:
        import json

        from advmix.report import read_runs, replace_results_section, results_section

        try:
            summary = json.loads(paths.SUMMARY_METRICS.read_text())
            runs = read_runs(Path("."), {(m, s) for m in p.train.modes for s in p.train.seeds})
            replace_results_section(results_doc, results_section(summary, runs))
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from None
        typer.echo(f"{results_doc}: the generated section rewritten from {paths.SUMMARY_METRICS}")
        return
    ds = _dataset(p)
    models = {m: paths.classifier(m, p.seed) for m in ("nominal", "advmix")}
    if all(f.is_file() for f in models.values()) and paths.GENERATOR.is_file():
        from advmix.evaluate import worst_mixes
        from advmix.models import load_classifier
        from advmix.runtime import pick_device

        G, layers, latents = _mixing_inputs(p, ds, "test_balanced")
        try:
            loaded = {m: load_classifier(f)[0] for m, f in models.items()}
        except ValueError as exc:  # a broken file
            raise _fail(str(exc)) from None
        arrays = worst_mixes(loaded, ds.split("test_balanced"), latents, G, layers, p,
                             pick_device(p.train.device, "train.device"))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(paths.WORST_MIXES, buffer.getvalue())
    try:
        summary = build_report(Path("."), class_names=ds.info.get("classes"), allow_missing=allow_missing)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    gain = summary.get("advmix_vs_nominal", {})
    typer.echo(f"{paths.SUMMARY_HTML}: {len(summary['modes'])} modes; AdvMix vs nominal on "
               f"test_balanced: relative error reduction {gain.get('relative_error_reduction_balanced')} "
               f"(95% CI {gain.get('relative_error_reduction_ci')}), worst-group gain {gain.get('worst_group_gain')} "
               f"(95% CI {gain.get('worst_group_gain_ci')}) over seeds {gain.get('paired_seeds')}")


@app.command("sweep")
def sweep_cmd(
    queue: Annotated[bool, typer.Option("--queue", help="queue one `dvc exp run` per rho")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="plot the finished experiments to reports/sweep.png")] = False,
    rho: Annotated[list[float] | None, typer.Option("--rho", help="rho values (repeatable; default 0.8 0.9 0.95 0.99)")
                   ] = None,
    small: Annotated[bool, typer.Option("--small", help="minutes per experiment on a CPU (see advmix/sweep.py)")
                     ] = False,
) -> None:
    """AdvMix against nominal over rho x train.seeds, as queued DVC experiments; then the plot.

    `advmix sweep --queue --small && dvc queue start -j 1`, wait for `dvc queue status`, then `advmix sweep --plot`.
    """
    import subprocess

    from advmix import paths
    from advmix.data.store import atomic_write_json
    from advmix.sweep import RHOS, by_rho, collect, queue_commands

    if queue == plot:
        raise _fail("give exactly one of --queue and --plot", 2)
    if queue:
        for cmd in queue_commands(tuple(rho or RHOS), small):
            typer.echo(" ".join(cmd))
            if subprocess.run(cmd, check=False).returncode:
                raise _fail(f"`{' '.join(cmd)}` failed")
        typer.echo("queued; start with `dvc queue start -j 1` (or -j N), follow with `dvc queue status`")
        return
    import dvc.api

    from advmix.sweep import plot as draw

    dataset = _load(Path("params.yaml"), None).data.name
    points = collect(dvc.api.exp_show(num=-1), dataset)
    if not points:
        raise _fail(f"no finished sweep experiment on {dataset}: `dvc exp show -A` has none with data.rho and "
                    "metrics/summary.json")
    names = sorted({str(p["experiment"]) for p in points})
    draw(points, paths.SWEEP_FIGURE, f"AdvMix vs nominal on {dataset}; experiments {', '.join(names)}")
    atomic_write_json(paths.SWEEP_JSON, {"by_rho": by_rho(points), "points": points})
    typer.echo(f"{paths.SWEEP_FIGURE}: {len(points)} (rho, seed) points from {len(names)} experiments")


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
