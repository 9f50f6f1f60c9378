"""Serve the advmix pipeline from this checkout with a weekly cron schedule (one host, no work pool).

    prefect server start                                      # terminal 1: API, UI and the scheduler
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py [--cron "0 3 * * 1"]   # terminal 2

`serve()` registers the deployment `advmix-pipeline/weekly` and runs its scheduled runs in
subprocesses until stopped. Schedules need a persistent server: Prefect's ephemeral mode (no
PREFECT_API_URL) never fires them. For workers on other hosts use prefect.yaml and a work pool
(README: "Running the pipeline").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from prefect.schedules import Cron

from flows.pipeline import advmix_pipeline

ROOT = Path(__file__).resolve().parents[1]  # the checkout this file is in (pip install -e): dvc.yaml, params.yaml
DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00
TIMEZONE = "UTC"
DEPLOYMENT_NAME = "weekly"


def build_deployment(cron: str = DEFAULT_CRON, root: str | Path = ROOT, parameters: dict[str, Any] | None = None):
    """The `advmix-pipeline/weekly` RunnerDeployment: every stage (or `parameters["stages"]`), no force, the
    project's params.yaml as committed."""
    return advmix_pipeline.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=TIMEZONE)],
        parameters={"root": str(root), "force": False, **(parameters or {})},
        description="advmix DVC pipeline (dvc repro, one task per stage) on a schedule",
        tags=["advmix"],
    )


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(description="Serve the advmix pipeline on a cron schedule (UTC).")
    parser.add_argument("--cron", default=DEFAULT_CRON,
                        help=f"cron expression, UTC (default: {DEFAULT_CRON!r}); a sixth field is seconds")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project the runs work in (default: this one)")
    parser.add_argument("--stage", action="append", dest="stages", help="run only this stage (repeatable)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the deployment's entrypoint flows/pipeline.py is relative to this checkout
    # one run at a time: two `dvc repro` in one project would fight over its lock; a late run waits its turn
    serve(build_deployment(args.cron, args.root.resolve(), {"stages": args.stages} if args.stages else None),
          limit=1)


if __name__ == "__main__":
    main()
