"""Where each stage reads and writes. Nothing else in advmix spells a path.

All paths are relative to the project root (the folder holding dvc.yaml), which is the
working directory when DVC runs a stage.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
PROFILES = Path("profiles")  # shipped params files: cpu.yaml (the committed default), gpu.yaml, celeba-gpu.yaml
DVC_YAML, DVC_LOCK = Path("dvc.yaml"), Path("dvc.lock")  # the pipeline, and what its last run recorded
DATA = Path("data")
METRICS = Path("metrics")
REPORTS = Path("reports")
MODELS = Path("models")
RESULTS = Path("results")  # per-run tables and arrays (dvclive folders, by_group.csv, the worst mixes)
SCRATCH = Path(".advmix")  # resumable training states: no DVC output, ignored by git
# a dataset folder (advmix/data/store.py): row i of images.npy is the image of manifest row i
DATASET_IMAGES, DATASET_MANIFEST, DATASET_INFO = "images.npy", "manifest.csv", "info.json"


PARAMS_CHECKED = RESULTS / "params-checked"  # check-params' output: prepare depends on it, so DVC runs that check first


def dataset_dir(name: str, root: Path = Path(".")) -> Path:
    return root / DATA / name


POOL_DIR = DATA / "pool"  # the unlabelled pool on its own: what the probe, the generator and the encoder learn from


def dataset_info(name: str, root: Path = Path(".")) -> Path:
    """What a dataset's columns mean (classes, attributes, which one is spurious)."""
    return dataset_dir(name, root) / DATASET_INFO


def validation_dir(root: Path = Path(".")) -> Path:
    return root / REPORTS / "validation"


def validation_page(root: Path = Path(".")) -> Path:
    """The Great Expectations results as one HTML page (validation_results beside it)."""
    return validation_dir(root) / "index.html"


def validation_results(root: Path = Path(".")) -> Path:
    """The Great Expectations results as GX wrote them (JSON)."""
    return validation_dir(root) / "results.json"


def validation_metrics(root: Path = Path(".")) -> Path:
    return root / METRICS / "validation.json"


PROBE = MODELS / "probe.pt"
PROBE_METRICS = METRICS / "probe.json"
GAN_DIR = MODELS / "gan"
GENERATOR = GAN_DIR / "generator.pt"
GAN_STATE = SCRATCH / "gan" / "state.pt"  # scratch, like train_state: models/gan needs no `persist`
GAN_REPORTS = REPORTS / "gan"
GAN_SAMPLES = GAN_REPORTS / "samples.png"
GAN_MIXING = GAN_REPORTS / "mixing.png"  # style mixing: coarse rows of one sample into another
GAN_METRICS = METRICS / "gan.json"
LAYERS_METRICS = METRICS / "layers.json"
LAYERS_AS_TRAINED = METRICS / "layers_as_trained.json"  # the perturbation set on the mixes training makes
LAYERS_FIGURE = REPORTS / "layers.png"
LATENTS_DIR = DATA / "latents"
TRAIN_RESULTS = RESULTS / "train"


EVAL_RESULTS = RESULTS / "eval"
EVAL_METRICS = METRICS / "eval"
SUMMARY_METRICS = METRICS / "summary.json"
SUMMARY_MD = REPORTS / "summary.md"
SUMMARY_HTML = REPORTS / "summary.html"  # self-contained: every figure inlined
SUMMARY_DIR = REPORTS / "summary"  # the report's own figures
SUMMARY_BY_GROUP = SUMMARY_DIR / "by_group.png"
SUMMARY_WORST_MIXES = SUMMARY_DIR / "worst_mixes.png"
WORST_MIXES = RESULTS / "report" / "worst_mixes.npz"  # the AdvMix mixes that fool nominal most


def run_name(mode: str, seed: int) -> str:
    """One classifier: a mode and a training seed (the DVC stages are train@<mode>-<seed>)."""
    return f"{mode}-s{seed}"


def classifier(mode: str, seed: int) -> Path:
    return MODELS / f"classifier-{run_name(mode, seed)}.pt"


def train_live_dir(mode: str, seed: int) -> Path:
    """The dvclive folder of train@<mode>-<seed>, swapped in whole when training succeeds."""
    return TRAIN_RESULTS / run_name(mode, seed)


def train_state(mode: str, seed: int) -> Path:
    """The mid-training state of train@<mode>-<seed>: scratch, outside every DVC output, so that no output needs
    `persist` and DVC's run-cache can restore a stage; a state from other params is not resumed (its fingerprint)."""
    return SCRATCH / "train" / run_name(mode, seed) / "state.pt"


def train_metrics(mode: str, seed: int) -> Path:
    return METRICS / "train" / f"{run_name(mode, seed)}.json"


def eval_dir(mode: str, seed: int) -> Path:
    """by_group.csv and the figures of evaluate@<mode>-<seed>."""
    return EVAL_RESULTS / run_name(mode, seed)


def eval_by_group(mode: str, seed: int) -> Path:
    """Accuracy per (split, group) of evaluate@<mode>-<seed>."""
    return eval_dir(mode, seed) / "by_group.csv"


def eval_metrics(mode: str, seed: int) -> Path:
    return EVAL_METRICS / f"{run_name(mode, seed)}.json"


SWEEP_FIGURE = REPORTS / "sweep.png"  # `advmix sweep --plot`: AdvMix vs nominal over rho, from DVC experiments
SWEEP_JSON = REPORTS / "sweep.json"

ENCODER = MODELS / "encoder.pt"  # train-encoder: learnt on the pool, read by extract
ENCODER_METRICS = METRICS / "encoder.json"
INVERSION_METRICS = METRICS / "inversion.json"
INVERSION_FIGURE = REPORTS / "inversion.png"


LATENTS_INFO = LATENTS_DIR / "info.json"  # beside the codes: the rows, digests and generator they were made for
POOL_LATENTS = DATA / "pool_latents" / "pool.npy"  # invert-pool: the pool partners' codes under mixing.bank: pool
POOL_LATENTS_INFO = POOL_LATENTS.with_name("info.json")  # beside them, with each partner's class as the probe reads it


def latents_file(split: str, root: Path = Path(".")) -> Path:
    """W+ codes of one split (in LATENTS_DIR): float32 N x n_latent x style_dim, row i = manifest row i."""
    return root / LATENTS_DIR / f"{split}.npy"
