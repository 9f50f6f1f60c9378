"""check-params: the pipeline's first stage. It reads the whole of params.yaml and refuses a bad edit before DVC
removes any stage's outputs.

DVC deletes a stage's outputs just before it runs the stage's command, and only that command can see that a value
is out of range (`data.rho: 1.5`) or that a mode is unknown (`train.modes: [advmixx]`, for which DVC itself would
only say that `train.advmixx` is missing). Every other stage is downstream of this one (prepare reads its output),
and `dvc repro` runs stages in dependency order, so a refused edit stops the pipeline here with every earlier
output in place. Its one output never changes, so a valid edit reruns only the stages that read the edited keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from advmix.stages import StageError

TEXT = b"params.yaml passed `advmix check-params`: every section present, every value valid\n"


class MissingSection(StageError):
    def __init__(self, message: str):
        super().__init__(message, code=2)  # a usage error


@dataclass
class Checked:
    source: Path

    def summary(self) -> str:
        return f"{self.source}: every section present, every value valid"


def check_sections(path: Path) -> None:
    """Refuse a params file that lacks a section.

    advmix fills a missing section with its defaults, but DVC reads every declared key from params.yaml itself and
    fails inside the pipeline."""
    import yaml

    from advmix.params import Params

    raw = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    missing = [f.alias or name for name, f in Params.model_fields.items() if (f.alias or name) not in raw]
    if missing:
        raise MissingSection(f"{path}: no {', '.join(missing)} section (DVC reads every key from the file); "
                             "run `advmix params --write` to write the defaults in")


def run(p, source: Path) -> Checked:
    """`p` is `source` already validated (the CLI refuses an invalid value before this runs)."""
    from advmix import paths
    from advmix.files import atomic_write_bytes

    check_sections(Path(source))
    atomic_write_bytes(paths.PARAMS_CHECKED, TEXT)  # the same bytes every time: DVC sees nothing new downstream
    return Checked(Path(source))
