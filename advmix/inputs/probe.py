"""The attribute probe (models/probe.pt), checked or loaded, or a StageError that names the file and what to do."""

from __future__ import annotations

from advmix import paths
from advmix.files import read_torch
from advmix.probes import load_probe
from advmix.stages import StageError


def check_probe() -> None:
    """That models/probe.pt exists and is a readable torch file (no weights built, no random draws): a stage calls
    this before long work that ends by reading the probe."""
    if not paths.PROBE.is_file():
        raise StageError(f"{paths.PROBE}: probe not found (run `advmix probe`)")
    try:  # a truncated or foreign file, named (torch's own error names no file)
        read_torch(paths.PROBE, "probe checkpoint", "rerun `advmix probe`")
    except ValueError as exc:
        raise StageError(str(exc)) from None


def probe():
    """The attribute probe of `advmix probe` (models/probe.pt)."""
    try:
        return load_probe(paths.PROBE)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from None
