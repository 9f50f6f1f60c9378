"""The params.yaml schema. `load_params` is the only reader of params.yaml.

Every knob of every stage lives here, one pydantic model per section, so a typo or a
wrong type fails before any work starts, with the dotted key that is wrong.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML

from advmix.modes import LAYER_PRESETS, NAMES, PARTNER_RULES
from advmix.paths import PARAMS, PROFILES

SPLITS = ("train", "val", "test_iid", "test_balanced", "test_flipped")  # the labelled splits
EVAL_SPLITS = SPLITS[1:]  # what a trained classifier is measured on
POOL = "pool"  # unlabelled for training: the generator and the encoder learn from it; no stage reads its labels
ALL_SPLITS = (*SPLITS, POOL)


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitSizes(Section):
    train: int = Field(3000, ge=4)
    val: int = Field(400, ge=4)
    test_iid: int = Field(400, ge=4)
    test_balanced: int = Field(800, ge=4)
    test_flipped: int = Field(400, ge=4)
    pool: int = Field(10_000, ge=0)  # label-independent images for the GAN, the encoder and the probe

    def as_dict(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in ALL_SPLITS}


class CelebAParams(Section):
    root: Path | None = None  # folder holding celeba/ (torchvision layout) or the files themselves
    target: str = "Smiling"
    spurious: str = "Male"


class FolderParams(Section):
    root: Path | None = None  # folder holding the metadata CSV and the images (paths in the CSV are relative to it)
    metadata: str = "metadata.csv"  # the CSV, one row per image (the Waterbirds layout by default)
    file: str = "img_filename"  # column: image path relative to root
    label: str = "y"  # column: the class (integers or strings)
    spurious: str = "place"  # column: the spurious attribute, as many values as classes
    split: str | None = "split"  # column: 0/1/2 or train/val/test; None or absent: draw every split from all rows
    mirror_invariant: bool = True  # a mirrored image shows the same class (birds, faces); false for text or digits


class DataParams(Section):
    name: Literal["synthfaces", "colordigits", "celeba", "folder"] = "synthfaces"
    resolution: int = 32
    rho: float = Field(0.99, ge=0.0, le=1.0)  # label/spurious agreement in train, val and test_iid
    # synthfaces only: the binary attribute correlated with the label; skin_dark and hair_dark are colours,
    # glasses and makeup_on shapes (glasses) or local colour (lips, blush)
    spurious: Literal["skin_dark", "glasses", "hair_dark", "makeup_on"] = "skin_dark"
    mouth: Literal["subtle", "medium", "wide"] = "medium"  # synthfaces only: how salient the smile is in pixels
    sizes: SplitSizes = SplitSizes()
    celeba: CelebAParams = CelebAParams()
    folder: FolderParams = FolderParams()

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 16 or v > 1024 or v & (v - 1):
            raise ValueError("expected a power of two from 16 to 1024")
        return v


class ValidateParams(Section):
    rho_tolerance: float = Field(0.02, ge=0.0, le=1.0)
    balance_tolerance: float = Field(0.02, ge=0.0, le=1.0)  # group share in test_balanced
    min_pixel_std: float = Field(0.02, ge=0.0)  # per image, pixels in [0, 1]
    mean_range: tuple[float, float] = (0.02, 0.98)
    max_saturated: float = Field(0.5, ge=0.0, le=1.0)  # fraction of pixels at 0 or 255
    pool_tolerance: float = Field(0.1, ge=0.0, le=0.5)  # the pool's label/spurious agreement must be 0.5 +- this

    @model_validator(mode="after")
    def _ordered(self) -> ValidateParams:
        lo, hi = self.mean_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError("validate.mean_range must be [lo, hi] with 0 <= lo < hi <= 1")
        return self


class ProbeParams(Section):
    """The attribute probe that measures generated and mixed images (not a model under study)."""

    epochs: int = Field(8, ge=1)
    batch: int = Field(64, ge=2)
    lr: float = Field(3e-3, gt=0)
    width: int = Field(32, ge=4)


class GanParams(Section):
    pretrained: Path | None = None  # a generator checkpoint to use instead of training one
    style_dim: int = Field(128, ge=8)
    n_mlp: int = Field(4, ge=1)
    channel_base: int = Field(1024, ge=16)  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = Field(128, ge=8)
    batch: int = Field(32, ge=2)
    iterations: int = Field(1500, ge=1)  # CPU-sized: keeps the layer bar (docs/results.md); the GPU profile: 30,000
    lr: float = Field(2e-3, gt=0)
    r1_gamma: float = Field(0.2, ge=0)
    r1_every: int = Field(16, ge=1)
    style_mixing: float = Field(0.9, ge=0, le=1)  # probability of a two-latent batch (style-mixing regulariser)
    ema_half_life_images: int = Field(10_000, ge=1)
    augment: list[Literal["flip", "translation", "color", "cutout"]] = ["flip", "translation"]
    checkpoint_minutes: float = Field(3.0, gt=0)
    eval_samples: int = Field(1000, ge=16)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class MixingParams(Section):
    layers: Literal[("auto", *LAYER_PRESETS)] | list[int] = "auto"
    partners: Literal[PARTNER_RULES] = "any"  # who may donate nuisance layers (the paper: anyone)
    # where partners come from: the train split's own codes (the paper's), or as many inverted pool images, whose
    # attributes are independent of the label (their class is the probe's reading): with same_label partners, mixes
    # keep the label and still meet every nuisance value, which the correlated train split rarely offers
    bank: Literal["train", "pool"] = "train"
    max_label_change: float = Field(0.1, ge=0, le=1)  # for `auto`: the label may change in at most this share
    min_transfer: float = Field(0.7, ge=0, le=1)  # for `auto`: the smallest range moving the spurious this often
    analysis_pairs: int = Field(2048, ge=8)


class ExtractParams(Section):
    """Inversion into W+ (owned by advmix/gan/invert.py). Two stages read it: train-encoder (encoder, encoder_steps,
    encoder_real_steps, batch, lr, width, feature_weight) and extract, which inverts the labelled splits (mode,
    refine_steps, refine_lr, refine_batch, feature_weight, latent_weight).
    """

    encoder: str = "train"  # train: learn one against the generator | PATH: a pSp or e4e checkpoint (.pt), loaded
    mode: Literal["encoder", "refine"] = "refine"  # encoder only (fast) or encoder + per-image optimisation
    encoder_steps: int = Field(1000, ge=0)  # on generator samples (w+, G(w+)): latent loss, no backward through G
    encoder_real_steps: int = Field(300, ge=0)  # then on the pool's real images: pixel + feature loss through G
    batch: int = Field(32, ge=2)  # encoder training batch
    lr: float = Field(1e-3, gt=0)
    width: int = Field(16, ge=4)  # encoder channels at full resolution (x2 per octave, at most x4)
    refine_steps: int = Field(25, ge=0)  # per-image Adam steps on W+ (0: encoder codes only)
    refine_lr: float = Field(0.05, gt=0)
    refine_batch: int = Field(128, ge=1)  # images optimised together (independent codes; only speed changes)
    feature_weight: float = Field(0.01, ge=0)  # probe-feature loss beside the pixel loss (keeps the label)
    latent_weight: float = Field(0.01, ge=0)  # refinement: pull towards the encoder's code (units of W's spread)


class NoKnobs(Section):
    """A mode with no knobs of its own (nominal, randmix). The section exists so that every train stage can
    declare `train.<mode>` in dvc.yaml, and a change to one mode's knobs reruns that mode alone."""


class AdvMixParams(Section):
    """The AdvMix inner maximisation (the layers and the partner rule come from `mixing`)."""

    partners_k: int = Field(4, ge=1)  # partners tried per example (hard swaps, one batched generator pass)
    strata: int = Field(0, ge=0)  # >0: the K partners visit this many k-means clusters of the pool's codes in turn
    steps: int = Field(2, ge=0)  # projected signed-gradient steps on alpha in [0, 1]^|layers|
    step_size: float = Field(0.5, gt=0, le=1)


class LinfParams(Section):
    """Pixel-space l-inf PGD, in [0, 1] pixel units (doubled for the [-1, 1] images)."""

    epsilon: float = Field(8 / 255, ge=0, le=1)
    steps: int = Field(5, ge=1)
    step_size: float = Field(2 / 255, gt=0, le=1)


class GroupDROParams(Section):
    """Group DRO (Sagawa et al. 2020): exponentiated-gradient weights on the per-group losses."""

    step_size: float = Field(0.01, gt=0)  # eta of q <- q * exp(eta * group loss)
    weight_decay: float = Field(1.0, ge=0)  # this mode's, instead of train.weight_decay: the paper needs strong l2
    adjustment: float = Field(0.0, ge=0)  # C of the generalisation adjustment: group loss + C / sqrt(group size)


class JTTParams(Section):
    """Just Train Twice (Liu et al. 2021): no group labels. An ERM model trained for `epochs_first` epochs
    marks the train images it gets wrong; the final model trains on train with those images `upweight` times."""

    epochs_first: int = Field(3, ge=1)  # T: epochs of the identification model
    upweight: int = Field(20, ge=1)  # lambda: how many times each error appears in the second run's epoch


class ColorJitterParams(Section):
    """torchvision's ColorJitter on the replaced share of each batch: a control that needs no generator."""

    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.4, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)

    def strengths(self) -> tuple[float, float, float, float]:
        return (self.brightness, self.contrast, self.saturation, self.hue)


class AugMixParams(Section):
    """torchvision's AugMix (Hendrycks et al. 2020) on the replaced share of each batch."""

    severity: int = Field(3, ge=1, le=10)
    width: int = Field(3, ge=1)  # augmentation chains mixed per image
    depth: int = Field(-1, ge=-1)  # ops per chain; -1: random in [1, 3]


Mode = Literal[NAMES]  # advmix/modes.py


class TrainParams(Section):
    """Classifier training for every mode (owned by advmix/classifier_training.py)."""

    modes: list[Mode] = [m for m in NAMES if m != "augmix"]  # every mode but AugMix, the weakest baseline
    seeds: list[NonNegativeInt] = [0, 1, 2, 3, 4]  # one train and one evaluate stage per (mode, seed); upstream: `seed`
    model: Literal["smallcnn", "resnet18"] = "smallcnn"
    width: int = Field(32, ge=4)  # channels of the first stage (64 = the standard ResNet-18)
    epochs: int = Field(8, ge=1)
    batch: int = Field(64, ge=2)  # global batch, split evenly across torchrun ranks
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"  # adam = AdamW (decoupled decay); sgd = Nesterov, momentum 0.9
    schedule: Literal["cosine", "constant"] = "cosine"  # after a linear warmup
    warmup_epochs: float = Field(1.0, ge=0)
    clean_ratio: float = Field(0.5, ge=0, le=1)  # share of each batch kept clean; the rest is replaced (not nominal)
    residual: bool = True  # randmix/advmix: add back what inversion lost, x - G(w_x)
    nominal: NoKnobs = NoKnobs()
    randmix: NoKnobs = NoKnobs()
    advmix: AdvMixParams = AdvMixParams()
    linf: LinfParams = LinfParams()
    groupdro: GroupDROParams = GroupDROParams()
    augmix: AugMixParams = AugMixParams()
    jtt: JTTParams = JTTParams()
    colorjitter: ColorJitterParams = ColorJitterParams()  # the common strength
    huejitter: ColorJitterParams = ColorJitterParams(hue=0.5)  # full hue
    eval_batch: int = Field(256, ge=1)
    checkpoint_minutes: float = Field(2.0, gt=0)  # mid-epoch training state; one is written every epoch too
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("modes", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("must not repeat")
        if not v:
            raise ValueError("must not be empty")
        return v


class DFRParams(Section):
    """Deep Feature Reweighting (Kirichenko et al. 2023): the last layer of a trained classifier refit by
    l1-regularised logistic regression on group-balanced val images; reads the group labels of val only."""

    bases: list[Mode] = ["nominal", "advmix"]  # the classifiers refit, each one run dfr_<base>; each in train.modes
    strengths: list[float] = [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]  # C (inverse l1 strength), the paper's grid
    subsets: int = Field(10, ge=1)  # group-balanced draws of val whose fitted layers are averaged

    @field_validator("strengths")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or min(v) <= 0:
            raise ValueError("must be a non-empty list of positive numbers")
        return v


class EvaluateParams(Section):
    """Evaluation (advmix/metrics.py): attacks stronger than in training, on a fixed subset of test_balanced."""

    robust_images: int = Field(256, ge=1)  # test_balanced images attacked (a seeded, group-stratified subset)
    val_robust_images: int = Field(0, ge=0)  # val images for the selection figure (seeded, uniform); 0: none
    partners_k: int = Field(16, ge=1)  # AdvMix at evaluation strength: more partners and steps than in training
    steps: int = Field(3, ge=0)
    step_size: float = Field(0.25, gt=0, le=1)
    random_mixes: int = Field(4, ge=1)  # random mixes per image for the mix change error
    linf_epsilons: list[float] = [2 / 255, 8 / 255]  # [0, 1] pixel units
    linf_steps: int = Field(10, ge=1)
    ece_bins: int = Field(15, ge=2)
    worst_mixes: int = Field(16, ge=1)  # shown in the report


class Params(Section):
    seed: NonNegativeInt = 0
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    probe: ProbeParams = ProbeParams()
    gan: GanParams = GanParams()
    mixing: MixingParams = MixingParams()
    extract: ExtractParams = ExtractParams()
    train: TrainParams = TrainParams()
    dfr: DFRParams = DFRParams()
    evaluate: EvaluateParams = EvaluateParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _dfr_bases_trained(self) -> Params:
        untrained = [b for b in self.dfr.bases if b not in self.train.modes]
        if untrained:  # DFR refits a classifier that train@<base> makes
            raise ValueError(f"dfr.bases {untrained} must be in train.modes {self.train.modes}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f", got {value!r}"
    return f"{key}: {err['msg'].lower()}{shown}"


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise ParamsError(f"{source}: invalid params\n{lines}") from None


def load_params(path: str | Path = PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml; `overrides` maps dotted keys to values (like `dvc exp run -S`)."""
    raw = _read_mapping(Path(path), "params file")
    if not overrides:
        return parse_params(raw, str(path))
    parse_params(raw, str(path))  # the file's own mistakes are blamed on the file, the rest on -S
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return parse_params(raw, f"-S {' '.join(overrides)} (over {path})")


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {key}: {part} is not a section")
    node[leaf] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`-S key=value` options (the CLI's, like `dvc exp run -S`) as {dotted key: YAML value}."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE")
        parsed[key] = yaml.safe_load(value)
    return parsed


TEMPLATE_PROFILE = "cpu"  # its comments document every key; written params files keep them


def profile_path(name: str, root: str | Path = ".") -> Path:
    """profiles/<name>.yaml under `root`, or `name` itself when it is a path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(root) / PROFILES / f"{name}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (Path(root) / PROFILES).glob("*.yaml"))
        raise ParamsError(f"profile {name!r}: {path} not found; shipped profiles: {', '.join(shipped) or 'none'}")
    return path


def load_profile(name: str, overrides: dict[str, Any] | None = None, root: str | Path = ".") -> Params:
    """A profile's params: its keys over those of the cpu profile (the committed default), then `overrides`."""
    path = profile_path(name, root)
    base = Path(root) / PROFILES / f"{TEMPLATE_PROFILE}.yaml"
    raw = _read_mapping(base, "profile") if base.is_file() and base.resolve() != path.resolve() else {}

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(raw, _read_mapping(path, "profile"))
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return parse_params(raw, str(path))


def render_params(p: Params, template: str | None = None) -> str:
    """params.yaml text holding every key of `p`. With `template` (a commented params file, the cpu profile), its
    layout and comments are kept and only the values change; keys it lacks are added at the end of their section."""

    values = p.to_dict()
    if template is None:
        return yaml.safe_dump(values, sort_keys=False)

    rt = YAML()
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    tree = rt.load(template)

    def update(node, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                update(node[key], value)
            elif key not in node or node[key] != value:
                if isinstance(value, list) and getattr(node.get(key), "fa", None) is not None:
                    seq = type(node[key])(value)  # a list keeps the flow style ([a, b]) it had
                    seq.fa.set_flow_style() if node[key].fa.flow_style() else seq.fa.set_block_style()
                    value = seq
                node[key] = value

    update(tree, values)
    buf = io.StringIO()
    rt.dump(tree, buf)
    return buf.getvalue()


def params_text(source: Path, profile: str | None, overrides: dict[str, Any]) -> str:
    """`advmix params`: every key of the params from `profile` (else the file `source`) with `overrides`, as a
    params file that keeps the comments of the template profile (cpu.yaml)."""
    template = PROFILES / f"{TEMPLATE_PROFILE}.yaml"
    origin = profile_path(profile) if profile else source
    resolved = load_profile(profile, overrides) if profile else load_params(source, overrides)
    text = render_params(resolved, template.read_text() if template.is_file() else None)
    if profile and not (template.is_file() and origin.resolve() == template.resolve()):
        text = f"# written by `advmix params --profile {profile} --write`: {origin} over {template}\n" + text
    return text
