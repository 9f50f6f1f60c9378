"""Reading the files advmix writes, with one clear line when a file is broken. A leaf module: it imports no advmix."""

from __future__ import annotations

import os
from typing import Any


class BrokenFileError(ValueError):
    """A file that exists but cannot be used; the message names it and says what to do."""


def read_torch(path: str | os.PathLike[str], what: str, fix: str) -> Any:
    """torch.load(weights_only=True) of `path`, or BrokenFileError naming the file, what it should be and `fix`.

    A truncated or foreign file and a pickle that weights_only refuses (code it would have to run) end the same way;
    torch's own first line (e.g. "Unsupported global: GLOBAL posix.system") is kept. FileNotFoundError passes.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError, KeyError,
            IndexError, TypeError, UnicodeDecodeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        reason = refused or (lines[0] if lines else type(exc).__name__)
        raise BrokenFileError(f"{path}: not a readable {what} ({reason[:200]}); {fix}") from None
