"""The `advmix` command: one subcommand per pipeline stage.

Heavy libraries are imported inside each command so that `advmix --help` stays fast.
Progress goes to stderr, results to stdout; any failure exits non-zero so DVC stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advmix.modes import NAMES as MODE_NAMES  # a leaf module: no torch
from advmix.progress import bar

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


def _stage(run, *args, **kwargs):
    """A stage's `run`, with its StageError as one clean line and exit code."""
    from advmix.stages import StageError

    try:
        return run(*args, **kwargs)
    except StageError as exc:
        raise _fail(str(exc), exc.code) from None


def _mode(mode: str, refits: bool = False) -> str:
    """A training mode, or with `refits` also a DFR run dfr_<mode>."""
    from advmix.modes import DFR_PREFIX

    if mode not in MODE_NAMES and not (refits and mode.removeprefix(DFR_PREFIX) in MODE_NAMES):
        extra = f" (or {DFR_PREFIX}<one of them>)" if refits else ""
        raise _fail(f"--mode {mode!r}: expected one of {', '.join(MODE_NAMES)}{extra}", 2)
    return mode


def _plain_stage(name: str, module: str, doc: str) -> None:
    """Register `advmix <name>`: load the params, run advmix.stages.<module>.run with a progress bar, print its
    summary (ranks other than 0 of a torchrun return None) and any warning."""

    def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
        import importlib

        done = _stage(importlib.import_module(f"advmix.stages.{module}").run, _load(params, set_), bar)
        if done is not None:
            typer.echo(done.summary())
        if getattr(done, "warning", None):
            typer.echo(f"warning: {done.warning}", err=True)

    command.__doc__ = doc
    app.command(name)(command)


_plain_stage("prepare", "prepare", "Build the dataset named by data.name into data/<name>/.")


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the Great Expectations suites on the prepared dataset; exit 1 on any failed expectation."""
    from advmix import paths
    from advmix.stages import validate as stage

    done = _stage(stage.run, _load(params, set_))
    report = done.report
    if not report.success:
        for f in report.failures:
            _console().print(f"[red]FAILED[/] {f.name} ({f.expectation}"
                             f"{', column ' + f.column if f.column else ''}): observed {f.observed}", highlight=False)
        raise _fail(f"data validation failed: {len(report.failures)} of {report.evaluated} expectations; "
                    f"see {paths.validation_dir() / 'index.html'}")
    typer.echo(done.summary())


_plain_stage("probe", "probe", "Train the attribute probe (label + every attribute) that measures generated and "
             "mixed images.")
_plain_stage("train-gan", "train_gan", "Train StyleGAN2 on `gan.data` (the unlabelled pool by default) or load "
             "gan.pretrained; write samples, mixing grid and quality.")
_plain_stage("extract", "extract", "Invert every labelled split into W+ (encoder, then per-image refinement): "
             "latents, encoder, metrics, a grid.")
_plain_stage("analyze-layers", "analyze_layers", "Swap each W+ layer between random pairs of inverted train faces; "
             "measure label change and nuisance transfer; pick `auto`.")


SeedOpt = Annotated[int | None, typer.Option("--seed", help="training seed of the classifier (default: `seed`)")]


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
    from advmix.stages import train as stage

    mode = _mode(mode)
    done = _stage(stage.run, _load(params, set_), mode, seed, bar)
    if done is not None:  # None on torchrun ranks other than 0
        typer.echo(done.summary())


@app.command("evaluate")
def evaluate_cmd(
    mode: Annotated[str, typer.Option("--mode", help="the trained mode to evaluate, or dfr_<mode>")] = "nominal",
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Evaluate one classifier: accuracy, group and fairness metrics, ECE, semantic and pixel robustness.

    Writes metrics/eval/<mode>-s<seed>.json and results/eval/<mode>-s<seed>/by_group.csv. The attacks draw from
    `seed` (not the classifier's seed), so every classifier meets the same test images and partners.
    """
    from advmix.stages import evaluate as stage

    mode = _mode(mode, refits=True)
    typer.echo(_stage(stage.run, _load(params, set_), mode, seed).summary())


@app.command("dfr")
def dfr_cmd(
    base: Annotated[str, typer.Option("--base", help="the trained mode whose last layer is refit")] = "nominal",
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Deep Feature Reweighting: refit the last layer of a trained classifier on group-balanced val (reads the
    group labels of val only). Writes models/classifier-dfr_<base>-s<seed>.pt and metrics/train/dfr_<base>-s<seed>.json.
    """
    from advmix.stages import dfr as stage

    base = _mode(base)
    typer.echo(_stage(stage.run, _load(params, set_), base, seed).summary())


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
    from advmix import paths
    from advmix.stages import report as stage

    p = _load(params, set_)
    if results_doc is not None:
        _stage(stage.rewrite_results_doc, results_doc)
        typer.echo(f"{results_doc}: the generated section rewritten from {paths.SUMMARY_METRICS}")
        return
    typer.echo(_stage(stage.run, p, allow_missing).summary())


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
    from advmix import sweep

    if queue == plot:
        raise _fail("give exactly one of --queue and --plot", 2)
    try:
        if queue:
            sweep.queue(tuple(rho or sweep.RHOS), small, echo=typer.echo)
            typer.echo("queued; start with `dvc queue start -j 1` (or -j N), follow with `dvc queue status`")
        else:
            typer.echo(sweep.plot_experiments(_load(Path("params.yaml"), None).data.name))
    except sweep.SweepError as exc:
        raise _fail(str(exc)) from None


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

    from flows.project import ProjectError, check_project

    root = Path.cwd()
    _load(root / "params.yaml", set_)  # a bad key exits 2
    try:
        check_project(root)  # so does a bad folder, before Prefect is imported
    except ProjectError as exc:
        raise _fail(str(exc), 2) from None
    from flows.pipeline import advmix_pipeline

    state = advmix_pipeline(stages=stage or None, force=force, params_overrides=_overrides(set_) or None,
                            root=str(root), return_state=True)
    if not state.is_completed():
        raise _fail(f"pipeline {state.name.lower()}: {state.message}")
    typer.echo(json.dumps(state.result(), indent=2, default=str))


if __name__ == "__main__":
    app()
