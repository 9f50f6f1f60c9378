"""Where each stage reads and writes. Nothing else in advmix spells a path.

All paths are relative to the project root (the folder holding dvc.yaml), which is the
working directory when DVC runs a stage.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data")
METRICS = Path("metrics")
REPORTS = Path("reports")
MODELS = Path("models")


def dataset_dir(name: str, root: Path = Path(".")) -> Path:
    return root / DATA / name


def validation_dir(root: Path = Path(".")) -> Path:
    return root / REPORTS / "validation"


def validation_metrics(root: Path = Path(".")) -> Path:
    return root / METRICS / "validation.json"
