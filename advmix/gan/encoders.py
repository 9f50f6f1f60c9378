"""The public W+ encoders, pSp (Richardson et al. 2021, GradualStyleEncoder) and e4e (Tov et al. 2021,
Encoder4Editing), rebuilt in plain PyTorch: no compiled op, so they run on a machine without a CUDA toolchain.

Both read a face resized to 256 x 256 in [-1, 1] with an IR-SE50 backbone (ArcFace's ResNet-50 with
squeeze-and-excitation units) and a feature pyramid over three of its stages:
- c1, 128 channels at 64 x 64 (after body unit 6); c2, 256 at 32 x 32 (unit 20); c3, 512 at 16 x 16 (unit 23);
- p2 = up(c3) + latlayer1(c2) and p1 = up(p2) + latlayer2(c1), `up` bilinear with aligned corners;
- one GradualStyleBlock per W+ row: log2(spatial) stride-2 3 x 3 convs with LeakyReLU, then an EqualLinear; rows
  0-2 (coarse) read c3 (16 x 16), rows 3-6 (middle) p2 (32 x 32), the rest (fine) p1 (64 x 64).
pSp predicts every row on its own. e4e predicts one w from c3 for every row and adds a per-row offset from the
same pyramid level (row 0 has none). Both add the generator's average latent (`latent_avg`) last.

Module names follow the public checkpoints (`input_layer`, `body.N.res_layer`, `styles.N.convs`, `latlayer1`), so
their `encoder.*` weights load with strict=True. Checkpoints are read with torch's weights-only loader.
ReStyle's encoders (6 input channels, run for several iterations) and pSp's single-w encoder are not rebuilt: they
are refused with a line that says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmix.gan.checkpoints import CheckpointError, _torch_load
from advmix.gan.networks import EqualLinear

INPUT_SIZE = 256  # both encoders read 256 x 256 faces
COARSE, MIDDLE = 3, 7  # W+ rows below COARSE read c3, below MIDDLE p2, the rest p1
IRSE50_BLOCKS = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))  # (in, depth, units); stride 2 first
TAPS = {6: "c1", 20: "c2", 23: "c3"}  # body unit index -> pyramid input
ENCODER_TYPES = ("GradualStyleEncoder", "Encoder4Editing")  # pSp's, e4e's


class EncoderError(CheckpointError):
    """A file that is no pSp or e4e checkpoint advmix can use; the message names it and what to do."""


class SEModule(nn.Module):
    """Squeeze and excitation: channels reweighted by a bottleneck over their global average."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    """res_layer(x) + shortcut_layer(x); the stride sits on the second 3 x 3 conv and on the shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SEModule(depth))

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """A feature map of side `spatial` down to one 512-d style: log2(spatial) stride-2 convs, then EqualLinear."""

    def __init__(self, channels: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).flatten(1))


class StyleEncoder(nn.Module):
    """The IR-SE50 backbone, the pyramid and one style block per W+ row; `mode` is pSp's or e4e's."""

    def __init__(self, n_styles: int, mode: str = "GradualStyleEncoder", input_channels: int = 3) -> None:
        super().__init__()
        if mode not in ENCODER_TYPES:
            raise ValueError(f"encoder type {mode!r}: expected one of {', '.join(ENCODER_TYPES)}")
        self.mode, self.n_styles = mode, n_styles
        self.input_layer = nn.Sequential(nn.Conv2d(input_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                         nn.PReLU(64))
        self.body = nn.Sequential(*[BottleneckIRSE(c_in if unit == 0 else depth, depth, 2 if unit == 0 else 1)
                                    for c_in, depth, units in IRSE50_BLOCKS for unit in range(units)])
        self.styles = nn.ModuleList(GradualStyleBlock(512, 16 if i < COARSE else 32 if i < MIDDLE else 64)
                                    for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def pyramid(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c3, p2, p1): the coarse, middle and fine features."""
        taps = {}
        x = self.input_layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in TAPS:
                taps[TAPS[i]] = x
        c3 = taps["c3"]
        p2 = upsample_add(c3, self.latlayer1(taps["c2"]))
        return c3, p2, upsample_add(p2, self.latlayer2(taps["c1"]))

    def forward(self, x: Tensor) -> Tensor:
        """W+ offsets [N, n_styles, 512] (before latent_avg) of faces [N, 3, 256, 256] in [-1, 1]."""
        c3, p2, p1 = self.pyramid(x)

        def level(i: int) -> Tensor:
            return c3 if i < COARSE else p2 if i < MIDDLE else p1

        if self.mode == "GradualStyleEncoder":  # pSp: every row on its own
            return torch.stack([style(level(i)) for i, style in enumerate(self.styles)], 1)
        w = self.styles[0](c3)[:, None].repeat(1, self.n_styles, 1)  # e4e: one w, then per-row offsets
        offsets = [torch.zeros_like(w[:, 0])] + [self.styles[i](level(i)) for i in range(1, self.n_styles)]
        return w + torch.stack(offsets, 1)


def upsample_add(x: Tensor, y: Tensor) -> Tensor:
    """x resized bilinearly (aligned corners) to y's size, plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


def load_public_encoder(path: str | Path, n_latent: int | None = None) -> tuple[StyleEncoder, Tensor]:
    """(the encoder in eval mode, latent_avg [n_styles, 512] or zeros) from a pSp or e4e checkpoint; EncoderError
    for a file that is neither, a ReStyle or single-w encoder, or one whose W+ rows differ from `n_latent`."""
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"{path}: no such file; give extract.encoder a pSp/e4e checkpoint (.pt), or `train`")
    obj = _torch_load(path)
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    encoder_sd = {k.removeprefix("encoder."): v for k, v in (sd or {}).items() if k.startswith("encoder.")}
    if not encoder_sd:
        raise EncoderError(f"{path}: not a pSp or e4e checkpoint (expected a dict whose 'state_dict' holds "
                           "'encoder.*' weights); give extract.encoder a pSp/e4e .pt, or `train`")
    opts = obj.get("opts") or {}
    opts = vars(opts) if not isinstance(opts, dict) else opts
    kind = opts.get("encoder_type", "GradualStyleEncoder")
    channels = int(encoder_sd["input_layer.0.weight"].shape[1]) if "input_layer.0.weight" in encoder_sd else 3
    if channels != 3 or "n_iters_per_batch" in opts:
        raise EncoderError(f"{path}: a ReStyle encoder ({kind}, {channels} input channels, run iteratively) is not "
                           "supported; use a pSp or e4e checkpoint, or extract.encoder: train")
    if kind not in ENCODER_TYPES or opts.get("learn_in_w"):
        raise EncoderError(f"{path}: encoder type {kind!r}{' with learn_in_w' if opts.get('learn_in_w') else ''} "
                           f"is not a W+ encoder advmix rebuilds (expected {' or '.join(ENCODER_TYPES)})")
    n_styles = 1 + max(int(k.split(".")[1]) for k in encoder_sd if k.startswith("styles."))
    if n_latent is not None and n_styles != n_latent:
        raise EncoderError(f"{path}: the encoder predicts {n_styles} W+ rows but the generator has {n_latent}; use "
                           "the encoder trained with this generator (the decoder in the same file)")
    encoder = StyleEncoder(n_styles, kind)
    try:
        encoder.load_state_dict(encoder_sd, strict=True)
    except RuntimeError as exc:
        raise EncoderError(f"{path}: its encoder weights do not fit {kind} on IR-SE50 "
                           f"({str(exc).splitlines()[0]})") from None
    latent_avg = obj.get("latent_avg")
    if latent_avg is None or not opts.get("start_from_latent_avg", True):
        latent_avg = torch.zeros(n_styles, 512)
    latent_avg = torch.as_tensor(latent_avg).float().reshape(-1, 512)
    if len(latent_avg) == 1:
        latent_avg = latent_avg.repeat(n_styles, 1)
    if latent_avg.shape != (n_styles, 512):
        raise EncoderError(f"{path}: latent_avg has shape {list(latent_avg.shape)}, expected [{n_styles}, 512] or "
                           "[512]")
    return encoder.eval(), latent_avg


def to_input(x: Tensor) -> Tensor:
    """Images [N, 3, H, W] in [-1, 1] as the encoders read them: resized (antialiased) to 256 x 256."""
    x = x.float()
    if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


def encode(encoder: StyleEncoder, latent_avg: Tensor, images: Tensor, batch: int = 16) -> Tensor:
    """W+ codes [N, n_styles, 512] of images [N, 3, H, W] in [-1, 1], resized to 256 x 256 first."""
    with torch.no_grad():
        out = [encoder(to_input(images[start:start + batch])) + latent_avg.to(images.device)
               for start in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.empty(0, encoder.n_styles, 512)


class PublicEncoder(nn.Module):
    """A pSp or e4e encoder in the place of advmix's own (`extract.encoder: PATH`): images at the data's resolution
    -> W+ = encoder(to_input(x)) + latent_avg; `w_std`, the spread of W, scales refinement's pull as for the own."""

    def __init__(self, n_styles: int, mode: str, style_dim: int = 512) -> None:
        super().__init__()
        self.config = {"n_styles": n_styles, "mode": mode}  # what load_encoder rebuilds it from
        self.n_latent, self.style_dim = n_styles, style_dim
        self.encoder = StyleEncoder(n_styles, mode)
        self.register_buffer("latent_avg", torch.zeros(n_styles, style_dim))
        self.register_buffer("w_std", torch.ones(style_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(to_input(x)) + self.latent_avg


def public_encoder(path: str | Path, G) -> PublicEncoder:
    """The pSp/e4e encoder of `path` for generator G (its W+ rows and style size checked), in eval mode."""
    encoder, latent_avg = load_public_encoder(path, n_latent=G.n_latent)
    if G.style_dim != 512:
        raise EncoderError(f"{path}: pSp and e4e predict 512-d styles but the generator's are {G.style_dim}-d; use "
                           "the generator the encoder was trained with (the decoder in the same file)")
    out = PublicEncoder(encoder.n_styles, encoder.mode)
    out.encoder.load_state_dict(encoder.state_dict())
    out.latent_avg.copy_(latent_avg)
    with torch.no_grad():
        w = G.mapping(torch.randn(4096, G.style_dim, generator=torch.Generator().manual_seed(0)))
    out.w_std.copy_(w.std(0).clamp_min(1e-3))
    return out.eval()


def save_public_layout(path: str | Path, encoder: StyleEncoder, latent_avg: Tensor,
                       decoder_state: dict[str, Tensor] | None = None, size: int = 1024) -> None:
    """A checkpoint in pSp/e4e's layout (for tests and the interop bench): `state_dict` with `encoder.*` (and
    `decoder.*`), `opts` as a plain dict, `latent_avg`."""
    sd = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    sd |= {f"decoder.{k}": v for k, v in (decoder_state or {}).items()}
    opts = {"encoder_type": encoder.mode, "stylegan_size": size, "output_size": size, "input_nc": 3,
            "start_from_latent_avg": True, "learn_in_w": False}
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": latent_avg}, path)


def describe(encoder: StyleEncoder) -> dict[str, Any]:
    return {"type": encoder.mode, "n_styles": encoder.n_styles,
            "parameters": sum(p.numel() for p in encoder.parameters())}
