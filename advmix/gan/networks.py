"""StyleGAN2 generator and discriminator in plain PyTorch.

The module tree, parameter names and shapes follow the public rosinality/stylegan2-pytorch layout (the one
most public checkpoints and encoders ship in), so a `g_ema` state dict from that code, or from an encoder that embeds it,
loads with `load_state_dict(strict=True)`. Nothing here needs a compiled extension: the fused bias+leaky-ReLU and
upfirdn2d ops are written with ordinary torch ops, so the same code runs on CPU, on CUDA, under bf16 autocast and
with channels_last tensors.

Runtime semantics match that layout: parameters are stored raw and scaled at run time (equalised learning rate),
modulation biases start at 1, convolutions are demodulated (except ToRGB), upsampling convolutions are a stride-2
transposed convolution followed by a 4x4 blur, and the ToRGB skip path is upsampled by zero insertion + the same
blur (upfirdn2d with up=2, pad=(2, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT2 = math.sqrt(2.0)
BLUR_KERNEL = (1, 3, 3, 1)
NOISE_MODES = ("const", "random", "none")


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def channels_for(size: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """Feature maps per resolution 4..size: min(channel_base // res, channel_max).

    channel_base = 16384 * channel_multiplier reproduces rosinality's table (32768 = config-f).
    """
    _check_size(size)
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, int(math.log2(size)) + 1)}


def _check_size(size: int) -> int:
    log = round(math.log2(size)) if size > 0 else 0
    if size < 4 or 2**log != size:
        raise ValueError(f"resolution must be a power of two >= 4, got {size}")
    return log


def _resolve_channels(
    size: int, channel_base: int, channel_max: int, channels: dict[int, int] | None
) -> dict[int, int]:
    """Channel table: the formula, or an explicit table (e.g. read from a checkpoint) checked for completeness."""
    if channels is None:
        return channels_for(size, channel_base, channel_max)
    table = {int(res): int(ch) for res, ch in channels.items()}
    needed = [2**i for i in range(2, _check_size(size) + 1)]
    missing = [res for res in needed if res not in table]
    if missing:
        raise ValueError(f"channels table lacks resolutions {missing} (needs 4..{size})")
    return {res: table[res] for res in needed}


def make_kernel(taps: Sequence[float]) -> Tensor:
    """Separable FIR kernel from 1-D taps, normalised to sum to 1."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, convolve each channel with `kernel`, downsample (rosinality's semantics).

    `pad` = (before, after) applies to both axes. A true convolution (kernel flipped), as in the reference op.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    if pad[0] or pad[1]:
        x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kh, kw = kernel.shape
    weight = kernel.flip([0, 1]).to(x.dtype).reshape(1, 1, kh, kw).repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, stride=down, groups=c)


def bias_leaky_relu(x: Tensor, bias: Tensor | None, negative_slope: float = 0.2, gain: float = SQRT2) -> Tensor:
    """leaky_relu(x + bias) * gain, the 'fused_lrelu' of StyleGAN2 (gain keeps the activation variance ~1)."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * gain


def _auto_fuse(x: Tensor, setting: bool | None) -> bool:
    """Whether to fold the blur into the conv: explicit setting, else on CUDA with 16-bit compute only.

    Measured on an H200 (256 px config-f G+D step, batch 16): folding saves ~15% under bf16 autocast (more with
    channels_last) but costs ~15% in float32/TF32, and the separate blur is cheaper on CPU.
    """
    if setting is not None:
        return setting
    return x.is_cuda and (torch.is_autocast_enabled("cuda") or x.dtype in (torch.float16, torch.bfloat16))


def fold_filter(weight: Tensor, kernel: Tensor, flip: bool) -> Tensor:
    """Full 2-D convolution of every [kh, kw] slice of `weight` with `kernel` -> [.., kh + fh - 1, kw + fw - 1].

    Folding the FIR filter into a convolution's weight turns "conv, then depthwise blur" (or "blur, then strided
    conv") into one dense convolution. That costs (k + f - 1)^2 / k^2 times the multiply-adds but runs on the
    tensor cores, whereas PyTorch's depthwise-convolution kernels are slow enough on GPU to dominate a step.
    `flip` selects the order: True for blur-after-transposed-conv, False for blur-before-conv.
    """
    a, b, kh, kw = weight.shape
    fh, fw = kernel.shape
    k = (kernel.flip([0, 1]) if flip else kernel).to(weight.dtype).reshape(1, 1, fh, fw)
    w = F.pad(weight.reshape(a * b, 1, kh, kw), [fw - 1, fw - 1, fh - 1, fh - 1])
    return F.conv2d(w, k).reshape(a, b, kh + fh - 1, kw + fw - 1)


# ----------------------------------------------------------------------------------------------------------------
# Layers with equalised learning rate


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square (the first 'layer' of the mapping network)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer storing raw N(0, 1/lr_mul) weights, scaled by lr_mul/sqrt(in) at run time."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return bias_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv2d storing raw N(0, 1) weights, scaled by 1/sqrt(in * k * k) at run time."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias followed by leaky ReLU * sqrt(2); the bias lives here (key `activate.bias`)."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return bias_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """FIR low-pass filter used after transposed-conv upsampling and before strided downsampling."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        # Upsampling by zero insertion divides the mean by factor**2; the kernel gain restores it.
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling by zero insertion + blur (the ToRGB skip path)."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


# ----------------------------------------------------------------------------------------------------------------
# Generator


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with weight demodulation.

    Computed the 'non-fused' way: scale the input channels by the style, convolve with the shared weight, scale the
    output channels by the demodulation coefficients. This equals rosinality's per-sample grouped convolution
    (the style and demodulation factors are per-channel and commute with the convolution) but keeps one weight for
    the whole batch, which suits cuDNN, channels_last and autocast.

    For upsampling, `fuse_blur` folds the blur into the transposed convolution (see `fold_filter`), with the same
    result; None (the default) decides per call (`_auto_fuse`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.fuse_blur: bool | None = None

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        n = x.shape[0]
        styles = self.modulation(w)  # [N, in]
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        x = x * styles.reshape(n, -1, 1, 1)
        fused = self.upsample and _auto_fuse(x, self.fuse_blur)
        if fused:
            # conv_transpose(3x3) then blur(pad 1, 4x4)  ==  conv_transpose(6x6, padding 2)
            folded = fold_filter(weight.transpose(0, 1), self.blur.kernel, flip=True)
            x = F.conv_transpose2d(x, folded, stride=2, padding=self.blur.kernel.shape[0] - 1 - self.blur.pad[0])
        elif self.upsample:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,kh,kw} (W_oi s_i)^2 = s^2 @ sum_{kh,kw} W^2, without materialising per-sample weights.
            # In float32 even under autocast: these coefficients set every output channel's scale.
            with torch.autocast(x.device.type, enabled=False):
                dcoefs = torch.rsqrt(styles.float().square() @ weight.float().square().sum([2, 3]).t() + 1e-8)
            x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if self.upsample and not fused:
            x = self.blur(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"demodulate={self.demodulate}, upsample={self.upsample}"
        )


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by a learned strength (initialised to 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            return x
        return x + self.weight * noise.to(x.dtype)


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally upsampling) + noise + bias/leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB without demodulation; adds the upsampled image of the previous resolution."""

    def __init__(
        self, in_channels: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[float] = BLUR_KERNEL
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator (config-f 'skip' architecture) with rosinality's state_dict layout.

    W+ index -> layer: 0 -> conv1; 1 -> to_rgb1 and convs.0; convs.{2k+1} -> 2k+2; to_rgbs.{k} and convs.{2k+2}
    share 2k+3. So `n_latent = 2 * log2(size) - 2` and the last index drives only the final ToRGB.
    """

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_base: int = 32768,
        channel_max: int = 512,
        lr_mlp: float = 0.01,
        channels: dict[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.log_size = _check_size(size)
        if size < 8:
            raise ValueError(f"Generator needs size >= 8, got {size}")
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channels = _resolve_channels(size, channel_base, channel_max, channels)
        self.init_kwargs = {
            "size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_base": channel_base,
            "channel_max": channel_max, "lr_mlp": lr_mlp, "channels": None if channels is None else dict(self.channels),
        }  # fmt: skip
        self.num_layers = (self.log_size - 2) * 2 + 1  # noise inputs
        self.memory_format = torch.contiguous_format  # of the activations; see to()
        self.n_latent = self.log_size * 2 - 2  # W+ length
        self.out_size = size  # side of the images synthesis returns: the classifier's resolution (see render_at)

        self.style = nn.Sequential(
            PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)]
        )
        ch4 = self.channels[4]
        self.input = ConstantInput(ch4)
        self.conv1 = StyledConv(ch4, ch4, 3, style_dim)
        self.to_rgb1 = ToRGB(ch4, style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept so the module tree mirrors the reference
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = ch4
        for log_res in range(3, self.log_size + 1):
            out_ch = self.channels[2**log_res]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch

    def to(self, *args, **kwargs):  # type: ignore[override]
        """Module.to, except that `memory_format` sets the layout of the activations.

        The modulated-conv weights are 5-D in this layout, so Module.to(memory_format=torch.channels_last) would
        fail on them; the activations are what matters for speed.
        """
        memory_format = kwargs.pop("memory_format", None)
        if memory_format is not None:
            self.memory_format = memory_format
        return super().to(*args, **kwargs)

    # -- mapping -----------------------------------------------------------------------------------------------

    def mapping(self, z: Tensor) -> Tensor:
        """z [N, style_dim] -> w [N, style_dim] (PixelNorm, then n_mlp equalised FC + leaky ReLU)."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Mean of mapping(z) over n random z: the truncation centre when a checkpoint has none. Returns [style_dim]."""
        device = self.input.input.device
        gen_device = generator.device if generator is not None else device
        total = torch.zeros(self.style_dim, dtype=torch.float64, device=device)
        done = 0
        while done < n:
            m = min(8192, n - done)
            z = torch.randn(m, self.style_dim, generator=generator, device=gen_device).to(device)
            total += self.mapping(z).double().sum(0)
            done += m
        return (total / max(n, 1)).float()

    def make_ws(
        self,
        z: Tensor,
        truncation: float = 1.0,
        w_avg: Tensor | None = None,
        mix_z: Tensor | None = None,
        mix_index: int | Tensor | None = None,
    ) -> Tensor:
        """z -> W+ codes [N, n_latent, style_dim].

        mapping(z) is broadcast to every layer; with `mix_z`, layers >= mix_index take mapping(mix_z) instead
        (style-mixing regularisation; mix_index may be an int, a 0-d tensor or one index per sample, and is drawn
        uniformly from [1, n_latent - 1] when None). Truncation moves every layer toward `w_avg` by `truncation`.
        """
        w = self.mapping(z)
        ws = w[:, None, :].expand(-1, self.n_latent, -1)
        if mix_z is not None:
            w2 = self.mapping(mix_z)[:, None, :].expand(-1, self.n_latent, -1)
            if mix_index is None:
                mix_index = torch.randint(1, self.n_latent, (), device=z.device)
            cut = torch.as_tensor(mix_index, device=z.device).reshape(-1, 1)
            layer = torch.arange(self.n_latent, device=z.device)[None, :]
            ws = torch.where((layer >= cut)[:, :, None], w2, ws)
        if truncation != 1.0:
            if w_avg is None:
                raise ValueError("truncation != 1 needs w_avg (e.g. from load_generator or G.mean_latent())")
            w_avg = w_avg.to(ws.device, ws.dtype).reshape(1, 1, -1)
            ws = w_avg + truncation * (ws - w_avg)
        return ws.contiguous()

    # -- synthesis ---------------------------------------------------------------------------------------------

    def render_at(self, resolution: int) -> Generator:
        """Make synthesis return images of side `resolution` (at most `size`): a public 256 or 1024 px generator
        beside a classifier at 32-224 px. Synthesis still runs at `size`; the image is then resized once,
        antialiased and differentiable, so gradients through it still reach the W+ codes."""
        if resolution > self.size:
            raise ValueError(f"the generator makes {self.size} px images, fewer than the {resolution} px asked for")
        self.out_size = resolution
        return self

    def _noise(self, i: int, ref: Tensor, noise_mode: str) -> Tensor | None:
        """Noise for noise layer i (resolution 2 ** ((i + 5) // 2)); `ref` gives batch, device and dtype."""
        if noise_mode == "const":
            return getattr(self.noises, f"noise_{i}")
        if noise_mode == "random":
            res = 2 ** ((i + 5) // 2)
            return torch.randn(ref.shape[0], 1, res, res, device=ref.device, dtype=ref.dtype)
        return None

    def synthesis(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """W+ codes [N, n_latent, style_dim] (or one w [N, style_dim] for all layers) -> image [N, 3, out_size,
        out_size] (`size` unless render_at said otherwise).

        noise_mode: "const" uses the stored `noises.noise_i` buffers (deterministic), "random" draws fresh noise,
        "none" adds no noise.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim == 2:
            ws = ws[:, None, :].expand(-1, self.n_latent, -1)
        if ws.ndim != 3 or ws.shape[1] != self.n_latent or ws.shape[2] != self.style_dim:
            raise ValueError(
                f"expected ws of shape [N, {self.n_latent}, {self.style_dim}] for size {self.size}, got {list(ws.shape)}"
            )
        x = self.input(ws.shape[0]).contiguous(memory_format=self.memory_format)
        x = self.conv1(x, ws[:, 0], self._noise(0, x, noise_mode))
        skip = self.to_rgb1(x, ws[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            up_conv, conv = self.convs[2 * k], self.convs[2 * k + 1]
            x = up_conv(x, ws[:, i], self._noise(2 * k + 1, x, noise_mode))
            x = conv(x, ws[:, i + 1], self._noise(2 * k + 2, x, noise_mode))
            skip = to_rgb(x, ws[:, i + 2], skip)
            i += 2
        if self.out_size != self.size:
            skip = F.interpolate(skip, size=(self.out_size, self.out_size), mode="bilinear", antialias=True,
                                 align_corners=False)
        return skip

    def forward(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        return self.synthesis(ws, noise_mode=noise_mode)


class SynthesisFromZ(nn.Module):
    """z (and a style-mixing partner) -> images through G's mapping and synthesis networks: the generator's training
    forward as one module call, so that torch's DistributedDataParallel can wrap it (its hooks are set in forward)."""

    def __init__(self, G: Generator) -> None:
        super().__init__()
        self.G = G

    def forward(self, z: Tensor, mix_z: Tensor | None = None, mix_index: int | None = None,
                noise_mode: str = "random") -> Tensor:
        return self.G.synthesis(self.G.make_ws(z, mix_z=mix_z, mix_index=mix_index), noise_mode=noise_mode)


# ----------------------------------------------------------------------------------------------------------------
# Discriminator


class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [bias/leaky ReLU], as an nn.Sequential so keys read `{i}.weight` like the reference."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(
            EqualConv2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias and not activate
            )
        )
        if activate:
            layers.append(FusedLeakyReLU(out_channels, bias=bias))
        super().__init__(*layers)
        self.downsample = downsample
        self.fuse_blur: bool | None = None  # None: decide per call (_auto_fuse)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.downsample and _auto_fuse(x, self.fuse_blur)):
            return super().forward(x)
        blur, conv = self[0], self[1]
        # blur(pad p) then conv(k, stride 2)  ==  conv(k + 3, stride 2, padding p)
        folded = fold_filter(conv.weight * conv.scale, blur.kernel, flip=False)
        x = F.conv2d(x, folded, conv.bias, stride=2, padding=blur.pad[0])
        for layer in list(self)[2:]:
            x = layer(x)
        return x


class ResBlock(nn.Module):
    """Two 3x3 convs (the second downsampling) plus a 1x1 downsampling skip, summed with 1/sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(
            in_channels, out_channels, 1, downsample=True, blur_kernel=blur_kernel, bias=False, activate=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


def stddev_group_size(batch: int, max_group: int = 4) -> int:
    """Largest group size <= min(max_group, batch) that divides the batch (so odd batches still work)."""
    group = max(1, min(max_group, batch))
    while batch % group:
        group -= 1
    return group


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with a minibatch-stddev feature, rosinality's key names."""

    def __init__(
        self,
        size: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        channels: dict[int, int] | None = None,
        stddev_group: int = 4,
    ) -> None:
        super().__init__()
        log_size = _check_size(size)
        self.size = size
        self.channels = _resolve_channels(size, channel_base, channel_max, channels)
        self.stddev_group = stddev_group
        convs: list[nn.Module] = [ConvLayer(3, self.channels[size], 1)]
        in_ch = self.channels[size]
        for log_res in range(log_size, 2, -1):
            out_ch = self.channels[2 ** (log_res - 1)]
            convs.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        ch4 = self.channels[4]
        self.final_conv = ConvLayer(in_ch + 1, ch4, 3)
        self.final_linear = nn.Sequential(EqualLinear(ch4 * 4 * 4, ch4, activation=True), EqualLinear(ch4, 1))

    def forward(self, img: Tensor) -> Tensor:
        """img [N, 3, size, size] -> logits [N, 1]."""
        x = self.convs(img)
        n, c, h, w = x.shape
        g = stddev_group_size(n, self.stddev_group)
        # Statistics in float32: a variance over 4 samples is fragile in bf16.
        y = x.float().reshape(g, -1, 1, c, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([2, 3, 4])  # [N/g, 1]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)
        x = self.final_conv(torch.cat([x, y], dim=1))
        return self.final_linear(x.reshape(n, -1))
