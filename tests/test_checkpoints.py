"""Generator checkpoints: own format, rosinality .pt, pSp-style encoders, and the safe NVIDIA pickle reader."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from advmix.gan import checkpoints
from advmix.gan.checkpoints import CheckpointError, load_generator, save_generator
from advmix.gan.networks import Generator

CONFIG = {"size": 16, "style_dim": 32, "n_mlp": 2, "channel_base": 512, "channel_max": 64, "lr_mlp": 0.01}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_generator(seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    G = Generator(**{**CONFIG, **overrides})
    with torch.no_grad():  # every parameter non-trivial, so a mis-mapped tensor shows in the output
        for _, p in G.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return G.eval()


def render(G: Generator, seed: int = 1) -> torch.Tensor:
    ws = torch.randn(2, G.n_latent, G.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G(ws, noise_mode="const")


# ----------------------------------------------------------------------------------------------------------------
# Own format


def test_own_format_round_trip(tmp_path):
    G = make_generator()
    w_avg = torch.randn(CONFIG["style_dim"])
    path = save_generator(tmp_path / "models" / "generator.pt", G, dict(CONFIG), w_avg, extra={"step": 7})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "advmix-stylegan2" and raw["step"] == 7
    G2, w2, info = load_generator(path)
    assert torch.equal(render(G2), render(G))
    assert torch.equal(w2, w_avg)
    assert info["format"] == "advmix" and info["extra"] == {"step": 7}
    assert not G2.training and not any(p.requires_grad for p in G2.parameters())
    assert os.listdir(path.parent) == ["generator.pt"]


def test_own_format_with_explicit_channel_table(tmp_path):
    channels = {4: 24, 8: 16, 16: 12}  # not of the channel_base // res form
    G = make_generator(channels=channels)
    save_generator(tmp_path / "g.pt", G, {}, torch.zeros(32))
    G2, _, info = load_generator(tmp_path / "g.pt")
    assert G2.channels == channels and info["config"]["channels"] == channels
    assert torch.equal(render(G2), render(G))


def test_save_rejects_a_config_that_disagrees(tmp_path):
    with pytest.raises(ValueError, match="size"):
        save_generator(tmp_path / "g.pt", make_generator(), {**CONFIG, "size": 32}, torch.zeros(32))
    with pytest.raises(ValueError, match="not Generator arguments"):
        save_generator(tmp_path / "g.pt", make_generator(), {"lr": 1}, torch.zeros(32))
    assert not list(tmp_path.iterdir())


def _boom(*args, **kwargs):
    f = args[1]
    f.write(b"PK\x03\x04 partial")  # a partial write lands in the temp file only
    raise RuntimeError("disk full")


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "generator.pt"
    G = make_generator()
    save_generator(path, G, CONFIG, torch.zeros(32))
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_generator(path, make_generator(seed=5), CONFIG, torch.ones(32))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["generator.pt"]
    with pytest.raises(RuntimeError):
        save_generator(tmp_path / "new.pt", G, CONFIG, torch.zeros(32))
    assert os.listdir(tmp_path) == ["generator.pt"]  # nothing left behind for a new path either


# ----------------------------------------------------------------------------------------------------------------
# rosinality .pt and encoder checkpoints


def test_rosinality_pt_with_latent_avg(tmp_path):
    G = make_generator()
    w_avg = torch.randn(32)
    path = tmp_path / "550000.pt"
    torch.save({"g_ema": G.state_dict(), "latent_avg": w_avg}, path)
    G2, w2, info = load_generator(path)
    assert torch.equal(render(G2), render(G))
    assert torch.equal(w2, w_avg)
    assert info["format"] == "rosinality"
    assert {k: info["config"][k] for k in ("size", "style_dim", "n_mlp")} == {"size": 16, "style_dim": 32, "n_mlp": 2}
    assert G2.channels == G.channels


def test_rosinality_training_checkpoint_without_latent_avg(tmp_path):
    G = make_generator()
    path = tmp_path / "train.pt"
    args = argparse.Namespace(size=16, batch=4, r1=10.0)  # rosinality's train.py stores its argparse args
    torch.save({"g": G.state_dict(), "d": {}, "g_ema": G.state_dict(), "args": args, "ada_aug_p": 0.0}, path)
    G2, w2, info = load_generator(path, mean_latent_samples=256)
    assert torch.equal(render(G2), render(G))
    expected = G.mean_latent(256, generator=torch.Generator().manual_seed(checkpoints.MEAN_LATENT_SEED))
    torch.testing.assert_close(w2, expected)
    assert info["w_avg_source"].startswith("mean_latent")


def test_psp_checkpoint_decoder(tmp_path):
    G = make_generator()
    w_avg = torch.randn(32)
    state = {"encoder.body.0.weight": torch.randn(4, 3, 3, 3)}
    state.update({f"decoder.{k}": v for k, v in G.state_dict().items()})
    path = tmp_path / "psp_ffhq.pt"
    torch.save({"state_dict": state, "opts": {"output_size": 16}, "latent_avg": w_avg.repeat(G.n_latent, 1)}, path)
    G2, w2, info = load_generator(path)
    assert torch.equal(render(G2), render(G))
    assert torch.equal(w2, w_avg)
    assert info["format"] == "psp"
    assert any("first row" in note for note in info["notes"])


def test_missing_keys_are_listed(tmp_path):
    sd = make_generator().state_dict()
    del sd["convs.1.noise.weight"]
    torch.save({"g_ema": sd}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken\.pt.*missing.*convs\.1\.noise\.weight"):
        load_generator(tmp_path / "broken.pt")


def test_a_generator_with_nan_or_inf_is_refused_on_load_and_on_save(tmp_path):
    sd = make_generator().state_dict()
    sd["convs.1.conv.weight"][0, 0, 0, 0, 0] = float("nan")
    torch.save({"g_ema": sd}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt: 1 weight tensor\(s\) hold NaN or Inf \(the first: "
                                              r"convs\.1\.conv\.weight\)"):
        load_generator(tmp_path / "nan.pt")
    G = make_generator()
    with pytest.raises(ValueError, match="refusing to write .*w_avg"):
        save_generator(tmp_path / "g.pt", G, dict(CONFIG), torch.full((CONFIG["style_dim"],), float("inf")))
    assert not (tmp_path / "g.pt").exists()


def test_a_generator_whose_images_overflow_is_refused(tmp_path):
    G = make_generator()
    with torch.no_grad():  # finite weights, but the RGB skip sum of two near-max biases overflows float32
        G.to_rgb1.bias.fill_(3e38)
        G.to_rgbs[0].bias.fill_(3e38)
    save_generator(tmp_path / "big.pt", G, dict(CONFIG), torch.zeros(CONFIG["style_dim"]))
    with pytest.raises(CheckpointError, match=r"big\.pt: the generator makes images with NaN or Inf pixels"):
        load_generator(tmp_path / "big.pt")


def test_unknown_layouts_are_rejected(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt.*unknown checkpoint layout"):
        load_generator(tmp_path / "other.pt")
    torch.save({"format": "something-else"}, tmp_path / "fmt.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_generator(tmp_path / "fmt.pt")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"g_ema": make_generator().state_dict(), "payload": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_generator(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["garbage", "truncated-pt", "truncated-pkl", "empty"])
def test_unreadable_files_name_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.bin"
    if kind == "garbage":
        path.write_bytes(os.urandom(64).replace(b"P", b"Q").replace(b"\x80", b"\x81"))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-pt":
        full = tmp_path / "full.pt"
        save_generator(full, make_generator(), CONFIG, torch.zeros(32))
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    else:
        path.write_bytes(nvidia_pickle_bytes(make_generator(), torch.zeros(32))[:2000])
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_generator(path)


def test_missing_file():
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_generator("/nonexistent/g.pt")


# ----------------------------------------------------------------------------------------------------------------
# stylegan2-ada-pytorch pickles, synthesised here with stand-in torch_utils / dnnlib modules


FAKE_SOURCE = "raise RuntimeError('the embedded module source must never be executed')\n"
_FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


@contextmanager
def fake_nvidia_modules():
    """Register stand-ins for torch_utils.persistence and dnnlib.util while *writing* a pickle only."""
    saved = {name: sys.modules.get(name) for name in _FAKE_MODULES}
    mods = {name: types.ModuleType(name) for name in _FAKE_MODULES}

    def _reconstruct_persistent_obj(meta):  # what NVIDIA's does: exec(meta['module_src']) ... never called here
        raise AssertionError("the reader must not call the original reconstructor")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

        def __setattr__(self, name, value):
            self[name] = value

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    mods["dnnlib.util"].EasyDict = EasyDict
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib"].util = mods["dnnlib.util"]
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Persistent(torch.nn.Module):
    """Pickles like a torch_utils.persistence class: a call to _reconstruct_persistent_obj(meta)."""

    reconstruct = None  # set while writing

    def __init__(self, class_name: str) -> None:
        super().__init__()
        self._class_name = class_name

    def __reduce__(self):
        state = dict(self.__dict__)  # the module's __dict__, as persistence pickles it
        meta = {
            "type": "class",
            "version": 4,
            "module_src": FAKE_SOURCE,
            "class_name": self._class_name,
            "state": state,
        }
        return (Persistent.reconstruct, (meta,))


def _module(class_name: str, params=None, buffers=None, children=None) -> Persistent:
    m = Persistent(class_name)
    for name, t in (params or {}).items():
        m.register_parameter(name, torch.nn.Parameter(t.detach().clone(), requires_grad=False))
    for name, t in (buffers or {}).items():
        m.register_buffer(name, t.detach().clone())
    for name, child in (children or {}).items():
        m.add_module(name, child)
    return m


def nvidia_g_from(G: Generator, w_avg: torch.Tensor, easydict, c_dim: int = 0) -> Persistent:
    """Lay out G's tensors as stylegan2-ada-pytorch's G_ema (the inverse of the notes' conversion table)."""
    sd = G.state_dict()

    def fc(prefix: str) -> Persistent:
        return _module("FullyConnectedLayer", {"weight": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]})

    def layer(src: str, noise: int, filt: torch.Tensor) -> Persistent:
        params = {"weight": sd[f"{src}.conv.weight"][0], "noise_strength": sd[f"{src}.noise.weight"].reshape(()),
                  "bias": sd[f"{src}.activate.bias"]}  # fmt: skip
        buffers = {"noise_const": sd[f"noises.noise_{noise}"][0, 0], "resample_filter": filt}
        return _module("SynthesisLayer", params, buffers, {"affine": fc(f"{src}.conv.modulation")})

    def torgb(src: str) -> Persistent:
        params = {"weight": sd[f"{src}.conv.weight"][0], "bias": sd[f"{src}.bias"].reshape(3)}
        return _module("ToRGBLayer", params, None, {"affine": fc(f"{src}.conv.modulation")})

    filt = sd["convs.0.conv.blur.kernel"] / 4
    blocks = {"b4": _module("SynthesisBlock", {"const": sd["input.input"][0]}, {"resample_filter": filt},
                            {"conv1": layer("conv1", 0, filt), "torgb": torgb("to_rgb1")})}  # fmt: skip
    for k in range(len(G.to_rgbs)):
        res = 2 ** (k + 3)
        children = {"conv0": layer(f"convs.{2 * k}", 2 * k + 1, filt),
                    "conv1": layer(f"convs.{2 * k + 1}", 2 * k + 2, filt), "torgb": torgb(f"to_rgbs.{k}")}  # fmt: skip
        blocks[f"b{res}"] = _module("SynthesisBlock", None, {"resample_filter": filt}, children)
    mapping = _module("MappingNetwork", None, {"w_avg": w_avg},
                      {f"fc{i}": fc(f"style.{i + 1}") for i in range(G.n_mlp)})  # fmt: skip
    g = _module("Generator", None, None, {"mapping": mapping, "synthesis": _module("SynthesisNetwork", None, None,
                                                                                     blocks)})  # fmt: skip
    g._init_kwargs = {
        "z_dim": G.style_dim, "c_dim": c_dim, "w_dim": G.style_dim, "img_resolution": G.size, "img_channels": 3,
        "mapping_kwargs": easydict(num_layers=G.n_mlp),
        "synthesis_kwargs": easydict(channel_base=512, channel_max=64, num_fp16_res=0, conv_clamp=None),
    }  # fmt: skip
    return g


def nvidia_pickle_bytes(G: Generator, w_avg: torch.Tensor, protocol: int = 4, c_dim: int = 0) -> bytes:
    with fake_nvidia_modules() as fake:
        Persistent.reconstruct = fake.reconstruct
        try:
            g_ema = nvidia_g_from(G, w_avg, fake.EasyDict, c_dim=c_dim)
            data = {"G": nvidia_g_from(G, w_avg, fake.EasyDict, c_dim=c_dim), "D": None, "G_ema": g_ema,
                    "augment_pipe": None, "training_set_kwargs": fake.EasyDict(path="faces.zip", resolution=G.size)}  # fmt: skip
            return pickle.dumps(data, protocol=protocol)
        finally:
            Persistent.reconstruct = None


@pytest.mark.parametrize("protocol", [2, 4])
def test_nvidia_pickle_is_converted_without_running_its_code(tmp_path, protocol):
    G = make_generator()
    w_avg = torch.randn(32)
    blob = nvidia_pickle_bytes(G, w_avg, protocol=protocol)
    assert b"torch_utils.persistence" in blob and b"_reconstruct_persistent_obj" in blob and b"EasyDict" in blob
    assert not any(name in sys.modules for name in _FAKE_MODULES)
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(blob)

    G2, w2, info = load_generator(path)
    assert torch.equal(render(G2), render(G))
    assert torch.equal(w2, w_avg)
    assert info["format"] == "nvidia-pkl"
    assert info["config"]["size"] == 16 and info["config"]["n_mlp"] == 2
    assert not any(name in sys.modules for name in _FAKE_MODULES)

    data = checkpoints.read_nvidia_pickle(path)
    assert data["G_ema"]["module_src"] == FAKE_SOURCE and data["G_ema"]["class_name"] == "Generator"
    assert data["training_set_kwargs"] == {"path": "faces.zip", "resolution": 16}


def test_nvidia_conditional_generator_is_rejected(tmp_path):
    path = tmp_path / "cond.pkl"
    path.write_bytes(nvidia_pickle_bytes(make_generator(), torch.zeros(32), c_dim=10))
    with pytest.raises(CheckpointError, match=r"cond\.pkl.*c_dim"):
        load_generator(path)


def test_pickle_with_a_foreign_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil(marker)}))
    with pytest.raises(CheckpointError, match=r"evil\.pkl.*refusing to load global '(posix|nt|os)\.system'"):
        load_generator(path)
    assert not marker.exists()
    # also refused when hidden inside an otherwise well-formed network's state
    G = make_generator()
    with fake_nvidia_modules() as fake:
        Persistent.reconstruct = fake.reconstruct
        try:
            g = nvidia_g_from(G, torch.zeros(32), fake.EasyDict)
            g._init_kwargs["hook"] = _Evil(marker)
            path.write_bytes(pickle.dumps({"G_ema": g}))
        finally:
            Persistent.reconstruct = None
    with pytest.raises(CheckpointError, match="refusing"):
        load_generator(path)
    assert not marker.exists()


def test_pickle_refuses_builtins_eval(tmp_path):
    # GLOBAL 'builtins eval', then call it on a string: a classic payload
    payload = b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00print('hi')\x85R."
    path = tmp_path / "eval.pkl"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"builtins\.eval"):
        load_generator(path)


def test_flatten_persistent_and_ordered_dicts():
    meta = {"state": {"_parameters": OrderedDict(w=torch.ones(2)), "_buffers": {"b": None},
                      "_modules": {"child": {"state": {"_parameters": {"x": torch.zeros(1)}}}, "gone": None}}}  # fmt: skip
    flat = checkpoints.flatten_persistent(meta)
    assert set(flat) == {"w", "child.x"}
