"""The project folder checked before a pipeline run starts, without importing Prefect.

`advmix run` refuses a bad folder here first: importing Prefect configures its log handlers on the
current stderr, and a refused run should neither pay for that nor leave handlers behind."""

from __future__ import annotations

from pathlib import Path

from advmix import paths


class ProjectError(ValueError):
    """The folder is no pipeline that DVC can run to the end: no dvc.yaml, or a params.yaml lacking a section."""

    code = 2  # the exit code of `advmix run`


class PipelineFailed(ProjectError):
    """A run that started and did not complete (a stage failed); the message says which and why."""

    code = 1


def check_project(root: str | Path) -> None:
    """Refuse, before any stage runs, a folder on which `dvc repro` would fail midway.

    advmix fills a missing params section with its defaults, but DVC reads every declared key from params.yaml
    itself, fails inside the stage, and deletes that stage's earlier outputs on the way."""
    import yaml

    from advmix.params import Params

    root = Path(root)
    if not (root / paths.DVC_YAML).is_file():
        raise ProjectError(f"{root}: no dvc.yaml; run `advmix run` from the project folder")
    path = root / paths.PARAMS
    raw = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    missing = [f.alias or name for name, f in Params.model_fields.items() if (f.alias or name) not in raw]
    if missing:
        raise ProjectError(f"{path}: no {', '.join(missing)} section (DVC reads every key from the file); "
                           "run `advmix params --write` to write the defaults in")


def run_pipeline(root: str | Path, stages: list[str] | None, force: bool, overrides: dict) -> dict:
    """`advmix run`: check the folder, then run the Prefect flow once; its metrics, or ProjectError saying why not.

    Prefect is imported only once the folder has passed."""
    check_project(root)
    from flows.pipeline import advmix_pipeline

    state = advmix_pipeline(stages=stages or None, force=force, params_overrides=overrides or None, root=str(root),
                            return_state=True)
    if not state.is_completed():
        raise PipelineFailed(f"pipeline {state.name.lower()}: {state.message}")
    return state.result()
