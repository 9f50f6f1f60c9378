"""Generator checkpoints: advmix's own format and readers for the public StyleGAN2 formats.

Accepted by `load_generator` (the format is detected from the content, not the file name):

- advmix's own file: `{"format": "advmix-stylegan2", "config": Generator kwargs, "g_ema": state_dict,
  "latent_avg": w_avg, ...extra}`, written atomically by `save_generator`;
- a rosinality/stylegan2-pytorch `.pt` (`{"g_ema": state_dict, "latent_avg"?: Tensor, ...}`, including its training
  checkpoints, or a bare `g_ema` state dict); the architecture is read from the tensor shapes;
- a pSp / e4e / ReStyle checkpoint (`{"state_dict": {"encoder.*", "decoder.*"}, "latent_avg"?: ...}`): the
  `decoder.*` generator is extracted;
- a stylegan2-ada-pytorch network pickle (`.pkl`), read by a restricted unpickler that executes none of the code
  embedded in the file, then converted key by key to the rosinality layout (`convert_nvidia_generator`).

Every `torch.load` here uses `weights_only=True`; nothing is ever unpickled into code.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advmix.files import atomic_torch_save
from advmix.gan.networks import Generator, channels_for

FORMAT = "advmix-stylegan2"
DEFAULT_LR_MLP = 0.01
MEAN_LATENT_SEED = 0

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (pre-1.6) format starts with a pickled magic number (protocol 2, LONG1 of 10 bytes).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_GENERATOR_KWARGS = ("size", "style_dim", "n_mlp", "channel_base", "channel_max", "lr_mlp", "channels")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a StyleGAN2 generator; the message names the file."""


# ----------------------------------------------------------------------------------------------------------------
# advmix's own format


def save_generator(
    path: str | os.PathLike[str],
    G: torch.nn.Module,
    config: dict[str, Any],
    w_avg: Tensor,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write G's weights, its constructor kwargs and w_avg atomically (temp file in the same folder + os.replace).

    `config` holds Generator kwargs; missing ones are taken from G. `extra` entries (e.g. step counts, metrics)
    are stored at the top level and must be plain data (tensors, numbers, strings, lists, dicts) so that the file
    stays loadable with `torch.load(weights_only=True)`. A crash mid-write leaves any previous file untouched.
    """
    path = Path(path)
    G = _unwrap(G)
    if not isinstance(G, Generator):
        raise TypeError(f"save_generator expects an advmix Generator, got {type(G).__name__}")
    unknown = sorted(set(config) - set(_GENERATOR_KWARGS))
    if unknown:
        raise ValueError(f"config has keys that are not Generator arguments: {unknown}")
    cfg = {**G.init_kwargs, **config}
    table = cfg["channels"] or channels_for(cfg["size"], cfg["channel_base"], cfg["channel_max"])
    mismatch = [k for k in ("size", "style_dim", "n_mlp") if cfg[k] != getattr(G, k)]
    if {int(r): int(c) for r, c in table.items()} != G.channels:
        mismatch.append("channels")
    if mismatch:
        raise ValueError(f"config disagrees with the generator on {mismatch}: config={cfg}, G={G.init_kwargs}")
    broken = [k for k, v in G.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken or not torch.isfinite(w_avg).all():
        raise ValueError(f"refusing to write {path}: NaN or Inf in {broken[0] if broken else 'w_avg'}")
    reserved = {"format", "config", "g_ema", "latent_avg"} & set(extra or {})
    if reserved:
        raise ValueError(f"extra must not override {sorted(reserved)}")
    payload = {
        "format": FORMAT,
        "config": cfg,
        "g_ema": {k: v.detach().cpu() for k, v in G.state_dict().items()},
        "latent_avg": w_avg.detach().reshape(-1).float().cpu(),
        **(extra or {}),
    }
    atomic_torch_save(payload, path)
    return path


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            module = module.module
        else:
            return module


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_generator(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", mean_latent_samples: int = 4096
) -> tuple[Generator, Tensor, dict[str, Any]]:
    """Read a generator from any supported format -> (G on `device`, w_avg [style_dim], info).

    G comes back in eval mode with requires_grad off (call `.train().requires_grad_(True)` to fine-tune it).

    `info` says what was read: "format", "path", "config" (Generator kwargs), "w_avg_source", "notes" (list of
    caveats, e.g. assumed lr_mlp or a reduced latent_avg) and, for the own format, "extra".
    When the checkpoint has no latent average, w_avg = G.mean_latent(mean_latent_samples) with a fixed seed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith((_ZIP_MAGIC, _LEGACY_TORCH_MAGIC)):
        obj = _torch_load(path)
        sd, latent_avg, config, info = _interpret_torch_checkpoint(path, obj)
    elif head[:1] == b"\x80":
        data = read_nvidia_pickle(path)
        sd, latent_avg, config, info = _interpret_nvidia_pickle(path, data)
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint (expected a torch.save file (.pt) or a stylegan2-ada-pytorch pickle (.pkl); "
            f"file starts with {head[:8]!r})"
        )
    info = {"path": str(path), "notes": [], **info}

    sd = _check_tensors(path, sd)
    if config is None:
        config = infer_config(sd, path=path)
        info["notes"].append(f"architecture inferred from tensor shapes; lr_mlp assumed {config['lr_mlp']}")
    try:
        G = Generator(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build a Generator from config {config}: {e}") from e
    _load_state_dict(path, G, sd)
    G = G.to(device).eval().requires_grad_(False)
    info["config"] = dict(config)

    w_avg = _reduce_latent_avg(path, latent_avg, G.style_dim, info)
    if w_avg is None:
        gen = torch.Generator().manual_seed(MEAN_LATENT_SEED)
        w_avg = G.mean_latent(mean_latent_samples, generator=gen)
        info["w_avg_source"] = f"mean_latent(n={mean_latent_samples}, seed={MEAN_LATENT_SEED})"
    w_avg = w_avg.to(device)
    check_outputs(G, w_avg, path)
    return G, w_avg, info


def _torch_load(path: Path) -> Any:
    # rosinality's training checkpoints pickle an argparse.Namespace ("args"); it only holds attributes.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused by the weights-only loader (the file references objects other than tensors and "
            f"plain containers): {_first_line(e)}"
        ) from e
    except Exception as e:  # truncated or corrupt archives raise RuntimeError, EOFError, zipfile errors, ...
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _interpret_torch_checkpoint(
    path: Path, obj: Any
) -> tuple[dict[str, Any], Any, dict[str, Any] | None, dict[str, Any]]:
    """-> (rosinality state dict, latent_avg or None, Generator config or None (infer), info)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        missing = [k for k in ("config", "g_ema") if k not in obj]
        if missing:
            raise CheckpointError(f"{path}: advmix checkpoint lacks {missing}")
        config = dict(obj["config"])
        unknown = sorted(set(config) - set(_GENERATOR_KWARGS))
        if unknown:
            raise CheckpointError(f"{path}: advmix checkpoint config has unknown keys {unknown}")
        if config.get("channels") is not None:
            config["channels"] = {int(r): int(c) for r, c in config["channels"].items()}
        extra = {k: v for k, v in obj.items() if k not in ("format", "config", "g_ema", "latent_avg")}
        info = {"format": "advmix", "extra": extra, "w_avg_source": "checkpoint latent_avg"}
        return dict(obj["g_ema"]), obj.get("latent_avg"), config, info
    if "format" in obj:
        raise CheckpointError(f"{path}: unknown checkpoint format {obj['format']!r} (expected {FORMAT!r})")
    if "g_ema" in obj:
        info = {"format": "rosinality", "w_avg_source": "checkpoint latent_avg"}
        return _as_dict(path, obj["g_ema"], "g_ema"), obj.get("latent_avg"), None, info
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        full = obj["state_dict"]
        sd = {k[len("decoder.") :]: v for k, v in full.items() if k.startswith("decoder.")}
        if not sd:
            raise CheckpointError(
                f"{path}: 'state_dict' has no 'decoder.*' keys (expected a pSp/e4e/ReStyle checkpoint; "
                f"first keys: {list(full)[:5]})"
            )
        info = {"format": "psp", "w_avg_source": "checkpoint latent_avg"}
        if any(k.startswith("encoder.") for k in full):
            info["notes"] = ["encoder weights ignored"]
        return sd, obj.get("latent_avg"), None, info
    if "input.input" in obj and "conv1.conv.weight" in obj:
        info = {"format": "rosinality-state-dict", "w_avg_source": "checkpoint latent_avg"}
        return dict(obj), None, None, info
    raise CheckpointError(
        f"{path}: unknown checkpoint layout; expected an advmix file (format={FORMAT!r}), a rosinality .pt with "
        f"'g_ema', or a pSp/e4e checkpoint with 'state_dict' holding 'decoder.*'; top-level keys: {list(obj)[:8]}"
    )


def _as_dict(path: Path, sd: Any, name: str) -> dict[str, Any]:
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: '{name}' should be a state dict, got {type(sd).__name__}")
    return dict(sd)


def _check_tensors(path: Path, sd: dict[str, Any]) -> dict[str, Tensor]:
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:5]}")
    broken = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} weight tensor(s) hold NaN or Inf (the first: {broken[0]}); "
                              f"the generator is broken: retrain it (advmix train-gan) or use another checkpoint")
    return sd


def check_outputs(G: Generator, w_avg: Tensor, path: Path) -> None:
    """Synthesise two images (a fixed private seed: no RNG stream moves) and refuse non-finite pixels, which
    finite weights can still give (an overflow in a large checkpoint)."""
    if not torch.isfinite(w_avg).all():
        raise CheckpointError(f"{path}: the latent average holds NaN or Inf; retrain the generator or use another")
    gen = torch.Generator().manual_seed(MEAN_LATENT_SEED)
    z = torch.randn(2, G.style_dim, generator=gen).to(w_avg.device)
    with torch.no_grad():
        x = G.synthesis(G.make_ws(z), noise_mode="const")
    if not torch.isfinite(x).all():
        raise CheckpointError(f"{path}: the generator makes images with NaN or Inf pixels; retrain it or use another")


def _reduce_latent_avg(path: Path, latent_avg: Any, style_dim: int, info: dict[str, Any]) -> Tensor | None:
    """latent_avg of shape [D], [1, D] or a repeated [n_styles, D] (pSp/ReStyle) -> [D]; None if absent."""
    if latent_avg is None:
        return None
    if not isinstance(latent_avg, Tensor) or latent_avg.shape[-1] != style_dim or latent_avg.ndim > 2:
        shape = list(latent_avg.shape) if isinstance(latent_avg, Tensor) else type(latent_avg).__name__
        raise CheckpointError(f"{path}: latent_avg should be [{style_dim}] or [n, {style_dim}], got {shape}")
    if latent_avg.ndim == 2 and latent_avg.shape[0] > 1:
        spread = (latent_avg - latent_avg[:1]).abs().max().item()
        info["notes"].append(
            f"latent_avg of shape {list(latent_avg.shape)} reduced to its first row (rows differ by at most {spread:.3g})"
        )
        info["w_avg_source"] = "checkpoint latent_avg[0]"
    return latent_avg.reshape(-1, style_dim)[0].float().clone()


def _load_state_dict(path: Path, G: Generator, sd: dict[str, Tensor]) -> None:
    expected = G.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: generator keys do not match the StyleGAN2 layout for {G.init_kwargs}: "
            f"{len(missing)} missing (e.g. {missing[:4]}), {len(unexpected)} unexpected (e.g. {unexpected[:4]})"
        )
    wrong = [f"{k}: {list(sd[k].shape)} vs {list(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensors have unexpected shapes (e.g. {wrong[:3]})")
    G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)


def infer_config(sd: Mapping[str, Tensor], path: str | os.PathLike[str] = "<state dict>") -> dict[str, Any]:
    """Generator kwargs from a rosinality-layout state dict: size, style_dim, n_mlp and the channel table."""
    try:
        n_mlp = len({m.group(1) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k))})
        n_up = len({m.group(1) for k in sd if (m := re.fullmatch(r"to_rgbs\.(\d+)\.conv\.weight", k))})
        style_dim = int(sd["conv1.conv.modulation.weight"].shape[1])
        size = 4 * 2**n_up
        channels = {4: int(sd["input.input"].shape[1])}
        for k in range(n_up):
            channels[2 ** (k + 3)] = int(sd[f"convs.{2 * k}.conv.weight"].shape[1])
    except KeyError as e:
        raise CheckpointError(f"{path}: not a StyleGAN2 generator state dict (missing key {e.args[0]!r})") from e
    if n_mlp == 0 or n_up == 0:
        raise CheckpointError(f"{path}: not a StyleGAN2 generator state dict (found {n_mlp} mapping layers, "
                              f"{n_up} ToRGB upsampling stages)")  # fmt: skip
    return config_from_channels(size, style_dim, n_mlp, channels)


def config_from_channels(size: int, style_dim: int, n_mlp: int, channels: dict[int, int]) -> dict[str, Any]:
    """Generator kwargs; expressed with channel_base/channel_max when the table follows that formula."""
    config: dict[str, Any] = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "lr_mlp": DEFAULT_LR_MLP}
    channel_max = max(channels.values())
    channel_base = channels[size] * size
    if channels_for(size, channel_base, channel_max) == channels:
        config.update(channel_base=channel_base, channel_max=channel_max)
    else:
        config.update(channel_base=channel_base, channel_max=channel_max, channels=dict(channels))
    return config


# ----------------------------------------------------------------------------------------------------------------
# stylegan2-ada-pytorch pickles, read without running any of their code


class _PersistentObject(dict):
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` becomes here: the meta dict itself
    (keys type, version, module_src, class_name, state). The embedded source is kept as text, never executed."""


def _reconstruct_persistent_obj(meta: Any) -> _PersistentObject:
    if not isinstance(meta, dict) or "state" not in meta:
        raise pickle.UnpicklingError("torch_utils.persistence object without a meta dict holding 'state'")
    return _PersistentObject(meta)


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict (ignores any instance state, which EasyDict never has)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


def _safe_load_from_bytes(b: bytes) -> Any:
    """Replacement for torch.storage._load_from_bytes (how plain pickles carry tensor storages)."""
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Tensor:
    """torch._tensor._rebuild_from_type_v2 restricted to plain tensors and parameters, ignoring Python state."""
    if func not in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter) or new_type not in (
        torch.Tensor,
        torch.nn.Parameter,
    ):
        raise pickle.UnpicklingError(f"refusing tensor rebuild through {func!r} as {new_type!r}")
    return func(*args)


def _rebuild_parameter_with_state(data: Tensor, requires_grad: bool, backward_hooks: Any, state: Any) -> Tensor:
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return {}
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray.multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.multiarray.scalar
    return allowed


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): _latin1_encode,  # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
        ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Size"): torch.Size,
    }
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"):
        allowed[("torch", name)] = getattr(torch, name)
    allowed.update(_numpy_globals())
    return allowed


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1")


class SafeNetworkUnpickler(pickle.Unpickler):
    """Unpickler for stylegan2-ada-pytorch network pickles that resolves only an allow-list of globals.

    Persistent objects come back as their meta dict (`_PersistentObject`), EasyDicts as dicts, tensors through
    torch's own rebuild functions (storages via `torch.load(weights_only=True)`); any other global is refused
    before anything is constructed or called.
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if SafeNetworkUnpickler._ALLOWED is None:
            SafeNetworkUnpickler._ALLOWED = _allowed_globals()
        # Protocol 0-2 pickles spell some globals the Python 2 way (__builtin__.set); map them like pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return SafeNetworkUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': only tensors, plain containers and "
                f"stylegan2-ada-pytorch persistent objects are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r} (not a network pickle)")


def read_nvidia_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle a stylegan2-ada-pytorch network pickle safely; networks come back as `_PersistentObject` dicts."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return SafeNetworkUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: unsafe or unreadable network pickle: {_first_line(e)}") from e
    except Exception as e:  # truncated files raise EOFError, garbage raises assorted errors
        raise CheckpointError(f"{path}: not a readable network pickle ({type(e).__name__}: {_first_line(e)})") from e


def flatten_persistent(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Tensor]:
    """{dotted name: tensor} over `state['_parameters']`, `state['_buffers']` and, recursively, `state['_modules']`."""
    state = obj.get("state")
    if not isinstance(state, Mapping):
        raise ValueError(f"{prefix or 'object'} has no module state")  # noqa: TRY004 - callers map it to CheckpointError
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if isinstance(t, Tensor):
                out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Mapping) or "state" not in child:
            raise ValueError(f"submodule {prefix + name} is not a persistent object")
        out.update(flatten_persistent(child, prefix + name + "."))
    return out


def _interpret_nvidia_pickle(
    path: Path, data: Any
) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Any], dict[str, Any]]:
    if not isinstance(data, Mapping) or not ({"G_ema", "G"} & set(data)):
        keys = list(data)[:8] if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(f"{path}: expected a network pickle with 'G_ema' (stylegan2-ada-pytorch), got {keys}")
    which = "G_ema" if isinstance(data.get("G_ema"), Mapping) else "G"
    net = data.get(which)
    if not isinstance(net, _PersistentObject):
        raise CheckpointError(f"{path}: '{which}' is not a stylegan2-ada-pytorch persistent network object")
    kwargs = dict(net["state"].get("_init_kwargs") or {})
    try:
        flat = flatten_persistent(net)
    except ValueError as e:
        raise CheckpointError(f"{path}: {which}: {e}") from e
    try:
        sd, w_avg, config, notes = convert_nvidia_generator(flat, kwargs)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if which != "G_ema":
        notes.insert(0, "no G_ema in the pickle; converted G (the non-EMA generator)")
    info = {"format": "nvidia-pkl", "notes": notes, "w_avg_source": "mapping.w_avg", "init_kwargs": kwargs}
    return sd, w_avg, config, info


def convert_nvidia_generator(
    flat: Mapping[str, Tensor], init_kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Any], list[str]]:
    """stylegan2-ada-pytorch G tensors (flat dotted names) -> (rosinality state dict, w_avg, config, notes).

    No flips and no +1 on modulation biases (NVIDIA's legacy.py already applied both); resample filters are
    scaled by 4 to become the blur / skip-upsample kernels. Raises ValueError on unsupported networks.
    """
    kw = dict(init_kwargs or {})
    notes: list[str] = []
    if int(kw.get("c_dim", 0) or 0) != 0 or "mapping.embed.weight" in flat:
        raise ValueError(f"conditional generator (c_dim={kw.get('c_dim')}) is not supported: c_dim must be 0")
    if any(".L0_" in k or k.startswith("synthesis.input.") for k in flat):
        raise ValueError("this is a StyleGAN3 generator; only StyleGAN2(-ADA) generators are supported")
    synth_kw = dict(kw.get("synthesis_kwargs") or {})
    arch = synth_kw.get("architecture", "skip")
    if arch != "skip" or any(re.match(r"synthesis\.b\d+\.skip\.", k) for k in flat):
        raise ValueError(f"synthesis architecture {arch!r} is not supported (only 'skip', StyleGAN2 config-f)")
    if int(kw.get("img_channels", 3)) != 3:
        raise ValueError(f"img_channels={kw.get('img_channels')} is not supported (RGB only)")

    fc = sorted(int(m.group(1)) for k in flat if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    res = sorted(int(m.group(1)) for k in flat if (m := re.fullmatch(r"synthesis\.b(\d+)\.torgb\.weight", k)))
    if not fc or not res or res[0] != 4:
        raise ValueError(
            "not a stylegan2-ada-pytorch generator: expected mapping.fc*.weight and synthesis.b4..bR tensors "
            f"(first names found: {list(flat)[:6]})"
        )
    size = res[-1]
    if res != [2**i for i in range(2, len(res) + 2)]:
        raise ValueError(f"synthesis blocks {res} are not the consecutive resolutions 4..{size}")
    w_dim = int(flat["synthesis.b4.conv1.affine.weight"].shape[1])
    z_dim = int(flat["mapping.fc0.weight"].shape[1])
    if z_dim != w_dim:
        raise ValueError(f"z_dim={z_dim} != w_dim={w_dim} has no equivalent in the rosinality layout")
    out: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        try:
            return flat[name].detach().float()
        except KeyError:
            raise ValueError(f"missing tensor {name!r}") from None

    for i in fc:
        out[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias")

    def layer(src: str, dst: str, noise_index: int) -> None:
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.activate.bias"] = take(f"{src}.bias")
        if f"{src}.noise_strength" in flat:
            out[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
            out[f"noises.noise_{noise_index}"] = take(f"{src}.noise_const")[None, None]
        else:  # use_noise=False: no noise at all, which strength 0 reproduces
            out[f"{dst}.noise.weight"] = torch.zeros(1)
            notes.append(f"{src} has no noise; noise strength set to 0")

    def torgb(src: str, dst: str) -> None:
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, 3, 1, 1)

    out["input.input"] = take("synthesis.b4.const").unsqueeze(0)
    layer("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    channels = {4: int(out["input.input"].shape[1])}
    for k, r in enumerate(res[1:]):
        block = f"synthesis.b{r}"
        layer(f"{block}.conv0", f"convs.{2 * k}", 2 * k + 1)
        layer(f"{block}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        torgb(f"{block}.torgb", f"to_rgbs.{k}")
        filt = flat.get(f"{block}.resample_filter", flat.get(f"{block}.conv0.resample_filter"))
        if filt is None:
            raise ValueError(f"missing tensor '{block}.resample_filter'")
        out[f"convs.{2 * k}.conv.blur.kernel"] = filt.detach().float() * 4
        out[f"to_rgbs.{k}.upsample.kernel"] = filt.detach().float() * 4
        channels[r] = int(out[f"convs.{2 * k}.conv.weight"].shape[1])
    # Layers built without noise still need the (unused, strength-0) noise buffers of the layout.
    for i in range(2 * len(res) - 1):
        if f"noises.noise_{i}" not in out:
            r = 2 ** ((i + 5) // 2)
            out[f"noises.noise_{i}"] = torch.zeros(1, 1, r, r)

    mapping_kw = dict(kw.get("mapping_kwargs") or {})
    config = config_from_channels(size, w_dim, len(fc), channels)
    config["lr_mlp"] = float(mapping_kw.get("lr_multiplier", DEFAULT_LR_MLP))
    if "lr_multiplier" not in mapping_kw:
        notes.append(f"mapping lr_multiplier not recorded; assumed {DEFAULT_LR_MLP}")
    if synth_kw.get("conv_clamp") is not None or kw.get("conv_clamp") is not None:
        notes.append("conv_clamp is ignored (no clamping here); outputs can differ slightly from NVIDIA's")
    w_avg = flat.get("mapping.w_avg")
    return out, (w_avg.detach().float() if w_avg is not None else None), config, notes
