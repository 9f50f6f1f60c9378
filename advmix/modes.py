"""The training modes: the one list from which the params schema, the CLI's help, the training loop's dispatch
and the report's row order derive. Adding a mode starts here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    summary: str  # one line, for --help and the docs
    mixing: bool = False  # mixes W+ codes: needs the generator, the train latents and the mixing layers
    group_labels: bool = False  # reads group labels (label x spurious attribute) in training


REGISTRY: tuple[Mode, ...] = (
    Mode("nominal", "ERM on clean images"),
    Mode("randmix", "random mixes of the nuisance W+ rows", mixing=True),
    Mode("advmix", "the worst of K mixes, refined by S gradient steps on the mixing weights", mixing=True),
    Mode("linf", "pixel l-inf PGD adversarial training"),
    Mode("groupdro", "Group DRO on the per-group losses", group_labels=True),
    Mode("augmix", "torchvision's AugMix"),
    Mode("jtt", "Just Train Twice: ERM for a few epochs, then train again with its errors upsampled"),
)

NAMES: tuple[str, ...] = tuple(m.name for m in REGISTRY)
MIXING_MODES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.mixing)
GROUP_LABEL_MODES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.group_labels)
# model selection (advmix/train.py): label_free keeps the epoch of best val accuracy (no group label read), the
# default, which evaluate attacks; val_worst_group the epoch of best val worst-group accuracy (val's group labels)
SELECTION_RULES: tuple[str, ...] = ("label_free", "val_worst_group")
DFR_PREFIX = "dfr_"  # DFR is no training mode: it refits the last layer of a trained one (advmix/dfr.py)


def dfr_run(base: str) -> str:
    """The run name of DFR on `base`'s classifier: its files are those of a mode of that name."""
    return DFR_PREFIX + base


def group_labels_read(run: str) -> str:
    """Which group labels a run's training reads: "train" (Group DRO), "val" (a DFR refit) or "none"."""
    if run in GROUP_LABEL_MODES:
        return "train"
    return "val" if run.startswith(DFR_PREFIX) else "none"
