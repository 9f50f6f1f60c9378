"""The `advmix` command: one subcommand per pipeline stage, each a thin wrapper of advmix.stages.<stage>.run.

Heavy libraries are imported inside each command so that `advmix --help` stays fast.
Progress goes to stderr, results to stdout; any failure exits non-zero so DVC stops.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from advmix import paths  # leaf modules: no torch
from advmix.modes import REGISTRY
from advmix.progress import bar

app = typer.Typer(help="advmix: adversarial mixing with disentangled representations. One command per stage.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file", dir_okay=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: -S data.rho=0.9")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="training seed of the classifier (default: `seed`)")]
NO_TORCH = ("params", "check-params", "prepare", "validate", "run", "sweep")  # run and sweep start advmix processes that count


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)  # one line
    return typer.Exit(code)


def _clean(call, *errors: type[Exception]):
    """call(), with any of `errors` (a user's mistake or a broken file) as one clean line and its exit code (the
    error's `code`, else 2: a usage error)."""
    try:
        return call()
    except errors as exc:
        raise _fail(str(exc), getattr(exc, "code", 2)) from None


def _load(params_path: Path, overrides: list[str] | None, command: str):
    """Params or a clean exit naming the bad key; a torch stage then takes its share of the CPU cores."""
    from advmix.params import ParamsError, load_params, parse_overrides
    from advmix.runtime import set_threads

    loaded = _clean(lambda: load_params(params_path, parse_overrides(overrides)), ParamsError)
    if command not in NO_TORCH:
        set_threads()
    return loaded


def _run(command: str, module: str, params: Path, set_: list[str] | None, *args):
    """advmix.stages.<module>.run(params, *args); prints the summary (ranks other than 0 of a torchrun return None)
    and any warning."""
    from advmix.stages import StageError

    stage = importlib.import_module(f"advmix.stages.{module}")
    done = _clean(lambda: stage.run(_writable(command, _load(params, set_, command), args), *args), StageError)
    if done is not None:
        typer.echo(done.summary())
    if getattr(done, "warning", None):
        typer.echo(f"warning: {done.warning}", err=True)
    return done


def _writable(command: str, p, args: tuple):
    """`p`, once every output of `command` is known to be writable (StageError naming the read-only one)."""
    from advmix.writes import check_writable, stage_outputs

    if command == "report" and args[1]:  # --docs: only those files are rewritten
        targets = list(args[1])
    elif command in ("train", "evaluate", "dfr"):
        targets = stage_outputs(command, p, *args[:2])
    else:
        targets = stage_outputs(command, p)
    check_writable(command, targets)
    return p


def _mode(mode: str, refits: bool = False) -> str:
    from advmix.modes import check_run

    return _clean(lambda: check_run(mode, refits), ValueError)


@app.command("params")
def params_cmd(
    params: ParamsOpt = paths.PARAMS,
    set_: SetOpt = None,
    profile: Annotated[str | None, typer.Option(help="start from profiles/NAME.yaml (cpu, gpu, celeba-gpu) or a file")
                       ] = None,
    write: Annotated[bool, typer.Option("--write", help="write the result to --params instead of printing it")] = False,
) -> None:
    """The resolved params, every key filled in: printed, or written in full with --write (what DVC needs).

    The source is --profile when given, else the params file; -S overrides apply on top. Written files keep the
    comments of profiles/cpu.yaml."""
    from advmix.files import atomic_write_bytes
    from advmix.params import ParamsError, params_text, parse_overrides

    text = _clean(lambda: params_text(params, profile, parse_overrides(set_)), ParamsError)
    if not write:
        typer.echo(text, nl=False)
        return
    from advmix.stages import StageError
    from advmix.writes import check_writable

    _clean(lambda: check_writable("params --write", [params]), StageError)
    atomic_write_bytes(params, text.encode())
    typer.echo(f"wrote {params}: {profile or params}{' with ' + ', '.join(set_) if set_ else ''}", err=True)


def _plain_stage(name: str, module: str, doc: str, progress: bool = True) -> None:
    """Register `advmix <name>`: advmix.stages.<module>.run, with a progress bar where it takes one."""

    def command(params: ParamsOpt = paths.PARAMS, set_: SetOpt = None) -> None:
        _run(name, module, params, set_, *([bar] if progress else []))

    command.__doc__ = doc
    app.command(name)(command)


@app.command("check-params")
def check_params_cmd(params: ParamsOpt = paths.PARAMS) -> None:
    """Check the params file (every section present, every value valid): the pipeline's first stage, so that a bad
    edit stops `dvc repro` before DVC removes any stage's outputs."""
    _run("check-params", "check_params", params, None, params)


_plain_stage("prepare", "prepare", "Build the dataset named by data.name into data/<name>/.")
_plain_stage("validate", "validate", "Run the Great Expectations suites on the prepared dataset; exit 1 on any failed "
             "expectation.", progress=False)
_plain_stage("pool", "pool", "Write the validated dataset's unlabelled pool to data/pool/, which the probe, the "
             "generator and the encoder learn from.", progress=False)
_plain_stage("probe", "probe", "Train the attribute probe (label + every attribute) on the pool; it measures generated "
             "and mixed images.")
_plain_stage("train-gan", "train_gan", "Train StyleGAN2 on the unlabelled pool or load gan.pretrained; write samples, "
             "mixing grid and quality.")
_plain_stage("train-encoder", "train_encoder", "Train the image-to-W+ encoder on generator samples, then on the pool.")
_plain_stage("extract", "extract", "Invert every labelled split into W+ (the encoder, then per-image refinement): "
             "latents, metrics, a grid.")
_plain_stage("invert-pool", "invert_pool", "Under mixing.bank: pool, invert the pool images that serve as mixing "
             "partners into W+, with the probe's class of each.")
_plain_stage("analyze-layers", "analyze_layers", "Swap each W+ layer between random pairs of inverted train faces; "
             "measure label change and nuisance transfer; pick `auto`.")


@app.command("train")
def train_cmd(mode: Annotated[str, typer.Option("--mode", help="; ".join(f"{m.name}: {m.summary}" for m in REGISTRY))
                               ] = "nominal",
              seed: SeedOpt = None, params: ParamsOpt = paths.PARAMS, set_: SetOpt = None) -> None:
    """Train the classifier of one mode and seed (the best val epoch is kept); a killed run resumes.

    Writes models/classifier-<mode>-s<seed>.pt, the dvclive folder results/train/<mode>-s<seed>/ and
    metrics/train/<mode>-s<seed>.json. Several GPUs: `torchrun --nproc_per_node N $(which advmix) train ...`.
    """
    _run("train", "train", params, set_, _mode(mode), seed, bar)


@app.command("evaluate")
def evaluate_cmd(mode: Annotated[str, typer.Option("--mode", help="a trained mode, or dfr_<mode>")] = "nominal",
                 seed: SeedOpt = None, params: ParamsOpt = paths.PARAMS, set_: SetOpt = None) -> None:
    """Evaluate one classifier: accuracy, group and fairness metrics, ECE, semantic and pixel robustness.

    Writes metrics/eval/<mode>-s<seed>.json and results/eval/<mode>-s<seed>/by_group.csv. The attacks draw from
    `seed` (not the classifier's seed), so every classifier meets the same test images and partners.
    """
    _run("evaluate", "evaluate", params, set_, _mode(mode, refits=True), seed)


@app.command("dfr")
def dfr_cmd(base: Annotated[str, typer.Option("--base", help="the trained mode whose last layer is refit")] = "nominal",
            seed: SeedOpt = None, params: ParamsOpt = paths.PARAMS, set_: SetOpt = None) -> None:
    """Deep Feature Reweighting: refit the last layer of a trained classifier on group-balanced val (reads the
    group labels of val only). Writes models/classifier-dfr_<base>-s<seed>.pt and metrics/train/dfr_<base>-s<seed>.json.
    """
    _run("dfr", "dfr", params, set_, _mode(base), seed)


@app.command("worst-mixes")
def worst_mixes_cmd(params: ParamsOpt = paths.PARAMS, set_: SetOpt = None) -> None:
    """The worst mixes against the nominal classifier of the first of train.seeds: AdvMix's search at evaluation
    strength on a test_balanced subset. Writes results/report/worst_mixes.npz, which the report shows."""
    _run("worst-mixes", "worst_mixes", params, set_)


@app.command("report")
def report_cmd(
    params: ParamsOpt = paths.PARAMS,
    set_: SetOpt = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="a partial report when planned runs lack "
                                                "their evaluation (it says so)")] = False,
    docs: Annotated[list[Path] | None, typer.Option("--docs", help="only rewrite the generated section of this file "
                                                    "(README.md: the headline; docs/results.md: the results) from "
                                                    "metrics/summary.json and metrics/eval/; repeatable",
                                                    dir_okay=False)] = None,
) -> None:
    """The comparison of every planned run: reports/summary.md, a self-contained reports/summary.html and
    metrics/summary.json. Reads only what the evaluate, dfr and worst-mixes stages and the earlier stages wrote.
    """
    _run("report", "report", params, set_, allow_missing, docs)


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

    name = _load(paths.PARAMS, None, "sweep").data.name
    _clean(lambda: sweep.command(queue, plot, rho, small, name, echo=typer.echo), sweep.SweepError)


@app.command("run")
def run_cmd(
    stage: Annotated[list[str] | None, typer.Option(
        "--stage", help="a stage to run (repeatable; default: all); `train` means every train@<mode>-<seed>")] = None,
    force: Annotated[bool, typer.Option("--force", help="run the stages even when DVC sees no change")] = False,
    set_: SetOpt = None,
) -> None:
    """Run the pipeline once as a Prefect flow: one task per DVC stage, in order. Run it from the project folder.

    -S overrides are checked, then written into params.yaml and left applied, like `dvc exp run -S`.
    Without PREFECT_API_URL, advmix starts a local Prefect server for the run and stops it afterwards.
    Prints the report's headline and path; the stages' logs are in the Prefect UI.
    """
    from advmix.params import parse_overrides
    from advmix.project import ProjectError, check_project, list_stages, select_stages

    root = Path.cwd()
    _load(root / paths.PARAMS, set_, "run")  # a bad key exits 2
    _clean(lambda: check_project(root), ProjectError)  # usage errors exit 2 before any server starts
    _clean(lambda: select_stages(list_stages(root), stage), ProjectError)
    from flows.pipeline import run_pipeline

    metrics = _clean(lambda: run_pipeline(root, stage, force, parse_overrides(set_),
                                          echo=lambda line: typer.echo(line, err=True)), ProjectError)
    typer.echo(run_summary(root, metrics))


@app.command("demo")
def demo_cmd(folder: Annotated[Path, typer.Argument(help="a new folder for the demo project")] = Path("demo")) -> None:
    """A first look in about two minutes: a new project in FOLDER with profiles/quick.yaml (every stage at tiny
    sizes), run to its report. Its numbers are a smoke run, not a result. Run it from the advmix checkout."""
    import shutil
    import subprocess
    import sys

    from advmix.params import ParamsError, params_text
    from advmix.project import ProjectError, repro_in_process

    for needed in (paths.DVC_YAML, paths.PROFILES / "quick.yaml"):
        if not needed.is_file():
            raise _fail(f"{needed}: missing; run `advmix demo` from the advmix checkout (the folder of dvc.yaml)", 2)
    if folder.exists() and any(folder.iterdir()):
        raise _fail(f"{folder}: exists and is not empty; name a new folder", 2)
    text = _clean(lambda: params_text(paths.PARAMS, "quick", {}), ParamsError)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(paths.DVC_YAML, folder / paths.DVC_YAML)
    # dvc.yaml declares each stage's code as files under advmix/: the project holds a copy, as a clone would
    shutil.copytree(Path(__file__).parent, folder / "advmix", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / paths.PARAMS).write_text(text)
    (folder / ".gitignore").write_text(f"/{paths.SCRATCH}/\n")
    git = ["git", "-c", "user.name=advmix demo", "-c", "user.email=demo@advmix.invalid"]
    dvc = [sys.executable, "-m", "dvc"]  # the venv's DVC, also when its bin/ is not on PATH
    for cmd in ([*git, "init", "-q"], [*dvc, "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "demo"]):
        # dvclive (in `advmix train`) wants a first commit
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False)
        if done.returncode:
            raise _fail(f"`{cmd[0]} {cmd[-2]}` in {folder}: {(done.stderr or done.stdout).strip()}")
    _clean(lambda: repro_in_process(folder, echo=lambda line: typer.echo(line, err=True)), ProjectError)
    typer.echo(run_summary(folder, {}))
    typer.echo(f"the project: {folder} (`dvc status` there: up to date; `dvc repro` reruns what you change)")


def run_summary(root: Path, metrics: dict) -> str:
    """What a finished run says: the report's headline and where the report is, or what ran when no report did."""
    import json

    summary = root / paths.SUMMARY_METRICS
    html = root / paths.SUMMARY_HTML
    if summary.is_file() and html.is_file():
        from advmix.report.page import headline

        text = headline(json.loads(summary.read_text())).replace("**", "")
        return f"{text}\nreport: {html}"
    return f"done: {len(metrics)} metrics (`dvc metrics show`); no report in this run"


if __name__ == "__main__":
    app()
