"""Writing files atomically, and reading the files advmix writes with one clear line when a file is broken.

A leaf module: it imports no advmix."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class BrokenFileError(ValueError):
    """A file that exists but cannot be used; the message names it and says what to do."""


def read_torch(path: str | os.PathLike[str], what: str, fix: str) -> Any:
    """torch.load(weights_only=True) of `path`, or BrokenFileError naming the file, what it should be and `fix`.

    A truncated or foreign file and a pickle that weights_only refuses (code it would have to run) end the same way;
    torch's own first line (e.g. "Unsupported global: GLOBAL posix.system") is kept. FileNotFoundError passes.
    """

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError, KeyError,
            IndexError, TypeError, UnicodeDecodeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if refused is not None:  # torch goes on to advise allowlisting the global or weights_only=False: never
            reason = "it holds code, which advmix never runs: " + refused.split(" was not an allowed global")[0]
        else:
            reason = next((line for line in lines if not any(w in line for w in SAFETY_ADVICE)), type(exc).__name__)
        raise BrokenFileError(f"{path}: not a readable {what} ({reason[:200]}); {fix}") from None


SAFETY_ADVICE = ("weights_only", "safe_globals", "allowlist", "trust this")  # torch's advice to load code anyway


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename: readers see the old file or the new one.

    The file gets the mode a plain open() would give (mkstemp's own is 0600), so a served report is readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (every checkpoint and training state goes through here)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temp folder beside `folder`; on success it replaces `folder` whole, on failure it vanishes."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tmp.chmod(0o777 & ~_umask())  # the mode of a plain mkdir, not mkdtemp's 0700
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
