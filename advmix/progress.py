"""The progress bar of every long stage: a rich bar on a terminal, a line every 30 s in logs (DVC, Prefect, CI).

It is what `advmix` passes as a stage's `progress` (advmix.stages.Progress).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from advmix.stages import Step


@contextmanager
def bar(description: str, total: int) -> Iterator[Step]:
    """A rich progress bar on a terminal; a line every 30 s in logs (DVC, Prefect, CI)."""
    import time

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True, soft_wrap=True)
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
