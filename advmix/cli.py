"""The `advmix` command: one subcommand per pipeline stage.

Heavy libraries are imported inside each command so that `advmix --help` stays fast.
Progress goes to stderr, results to stdout; any failure exits non-zero so DVC stops.
"""

from __future__ import annotations

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


def _load(params_path: Path, overrides: list[str] | None = None):
    """Params or a clean exit naming the bad key."""
    import yaml

    from advmix.params import ParamsError, load_params

    parsed = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--set {item!r}: expected KEY=VALUE", 2)
        parsed[key] = yaml.safe_load(value)
    try:
        return load_params(params_path, parsed)
    except ParamsError as exc:
        raise _fail(str(exc), 2) from None


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=_console())


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
    with _progress() as bar:
        task = bar.add_task(f"prepare {p.data.name}", total=sum(p.data.sizes.as_dict().values()))
        try:
            ds = build_dataset(p, progress=lambda n: bar.advance(task, n))
        except DatasetError as exc:
            raise _fail(str(exc)) from None
    save_dataset(out, ds)
    counts = ds.manifest.groupby("split").size().to_dict()
    typer.echo(f"wrote {out}: {len(ds)} images {ds.images.shape[1:]} {counts}")


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the Great Expectations suites on the prepared dataset; exit 1 on any failed expectation."""
    from advmix import paths
    from advmix.data import DatasetError, load_dataset
    from advmix.validate import run_suites, write_outputs

    p = _load(params, set_)
    try:
        ds = load_dataset(paths.dataset_dir(p.data.name))
    except DatasetError as exc:
        raise _fail(str(exc)) from None
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


if __name__ == "__main__":
    app()
