"""The training modes: the one list from which the params schema, the CLI's help, the training loop's dispatch
and the report's row order derive. Adding a mode starts here. Also the other names that params, stages and the
report share: selection rules, partner rules, the W+ layer presets. A leaf module: no torch, no advmix."""

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
    Mode("colorjitter", "torchvision's ColorJitter at the common strength (brightness, contrast, saturation 0.4, hue 0.1)"),
    Mode("huejitter", "torchvision's ColorJitter at full hue (hue 0.5): the cheap control for a colour nuisance"),
)

NAMES: tuple[str, ...] = tuple(m.name for m in REGISTRY)
MIXING_MODES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.mixing)
GROUP_LABEL_MODES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.group_labels)
# model selection (advmix/classifier_training.py): label_free keeps the epoch of best val accuracy (no group label read), the
# default, which evaluate attacks; val_worst_group the epoch of best val worst-group accuracy (val's group labels)
SELECTION_RULES: tuple[str, ...] = ("label_free", "val_worst_group")
# mixing.partners (advmix/mixing.py): who may donate the nuisance rows of a mix; the paper's rule is anyone
PARTNER_RULES: tuple[str, ...] = ("any", "same_label")
# mixing.layers' named sets (advmix/mixing.py: layer_groups), besides `auto` and explicit indices
LAYER_PRESETS: tuple[str, ...] = ("coarse", "middle", "fine", "middle+fine")
DFR_PREFIX = "dfr_"  # DFR is no training mode: it refits the last layer of a trained one (advmix/dfr.py)


def dfr_run(base: str) -> str:
    """The run name of DFR on `base`'s classifier: its files are those of a mode of that name."""
    return DFR_PREFIX + base


def group_labels_read(run: str) -> str:
    """Which group labels a run's training reads: "train" (Group DRO), "val" (a DFR refit) or "none"."""
    if run in GROUP_LABEL_MODES:
        return "train"
    return "val" if run.startswith(DFR_PREFIX) else "none"


def check_run(name: str, refits: bool = False) -> str:
    """`name` when it is a training mode (with `refits`, also a DFR run dfr_<mode>); else ValueError saying what is."""
    if name in NAMES or (refits and name.startswith(DFR_PREFIX) and name.removeprefix(DFR_PREFIX) in NAMES):
        return name
    extra = f" (or {DFR_PREFIX}<one of them>)" if refits else ""
    raise ValueError(f"--mode {name!r}: expected one of {', '.join(NAMES)}{extra}")
