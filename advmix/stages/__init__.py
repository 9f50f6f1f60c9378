"""One module per pipeline stage. Each has one `run(p, ...)` that does the stage's work, writes its outputs (through
advmix.paths) and returns a typed result; `advmix/cli.py` only parses options, shows progress and prints
`result.summary()`. bench/ and the tests call `run` directly.

A user's mistake or a broken input file raises StageError: one line that names the file or key and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

Step = Callable[..., None]  # step(n=1, completed=None, info="", of=None): advance a progress bar
Progress = Callable[[str, int], AbstractContextManager[Step]]  # progress(description, total) -> a bar's step


class StageError(Exception):
    """A clean stop: `message` is one line for the user; `code` the exit status (2: a usage error)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Step]:
    """The default of every stage's `progress`: no bar."""
    yield lambda *args, **kwargs: None
