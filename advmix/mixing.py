"""The mixing operator and the W+ layer groups. The one place that says what "mixing" means.

`mix(w_a, w_b, alpha, layers)` keeps every layer of `w_a` outside `layers` and moves the layers in
`layers` towards `w_b` by `alpha` (alpha = 1 is a hard swap, the paper's composition).

Layer groups follow the StyleGAN paper's style-mixing figure, scaled to the resolution: at 1024 px
coarse = 4-8 px (W+ 0-3), middle = 16-32 px (4-7), fine = 64-1024 px (8-17). With n resolutions
4..size, coarse and middle each take ceil(2n/9) of them and fine the rest; at 32 px that is
coarse 0-1, middle 2-3, fine 4-7. Resolution r = 2^k owns W+ indices 2k-4 and 2k-3 (the second
is shared with the next block's first conv, as in the public layout).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from advmix.modes import LAYER_PRESETS, PARTNER_RULES


def partner_key(labels, rule: str):
    """Rows may be partners when their keys are equal: the class under same_label, one key for all under any.

    `labels`: a numpy array or a tensor; the key has its type and dtype."""
    if rule not in PARTNER_RULES:
        raise ValueError(f"partner rule {rule!r}: expected one of {PARTNER_RULES}")
    return labels if rule == "same_label" else labels * 0


def layer_groups(resolution: int) -> dict[str, list[int]]:
    """The W+ indices of each of LAYER_PRESETS at `resolution` (the module docstring says how)."""
    n_res = int(math.log2(resolution)) - 1  # resolutions 4 .. resolution
    per = math.ceil(2 * n_res / 9)
    coarse = list(range(2 * per))
    middle = list(range(2 * per, min(4 * per, 2 * n_res)))
    fine = list(range(4 * per, 2 * n_res))
    return dict(zip(LAYER_PRESETS, (coarse, middle, fine, middle + fine), strict=True))


def resolve_layers(spec: str | list[int], resolution: int, layers_json: Path | None = None) -> list[int]:
    """Indices for a `mixing.layers` value: a preset, an explicit list, or `auto` from analyze-layers."""
    n_latent = 2 * int(math.log2(resolution)) - 2
    if isinstance(spec, list):
        bad = [i for i in spec if not 0 <= i < n_latent]
        if bad or not spec:
            raise ValueError(f"mixing.layers: indices {bad or spec} outside 0..{n_latent - 1} for {resolution} px")
        return sorted(set(spec))
    if spec == "auto":
        import json

        if layers_json is None or not Path(layers_json).is_file():
            raise FileNotFoundError(f"mixing.layers is 'auto' but {layers_json} is missing (run `advmix analyze-layers`)")
        try:
            auto = json.loads(Path(layers_json).read_text())["auto"]
            return [int(i) for i in auto]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{layers_json}: not a readable layer analysis ({type(exc).__name__}: {exc}); rerun "
                             "`advmix analyze-layers`") from None
    return layer_groups(resolution)[spec]


def mix(w_a, w_b, alpha, layers: list[int]):
    """W+ codes [N, L, D]: the layers in `layers` move from w_a towards w_b by alpha.

    alpha is a scalar, one value per sample [N], or one per sample and layer [N, |layers|];
    the result is differentiable in alpha (AdvMix ascends it).
    """
    alpha = torch.as_tensor(alpha, dtype=w_a.dtype, device=w_a.device)
    if alpha.ndim == 1:
        alpha = alpha[:, None]
    weight = torch.zeros(w_a.shape[:2], dtype=w_a.dtype, device=w_a.device)
    weight[:, layers] = alpha.expand(w_a.shape[0], len(layers))
    return w_a + weight[..., None] * (w_b - w_a)


SYNTHESIS_PIXELS = 2**23  # of the generator's own images per synthesis call, where mixes are synthesised in parts


def codes_per_pass(G) -> int:
    """W+ codes one synthesis call may take: 8,192 at 32 px, 128 at 256, 8 at 1024, so that a public 1024 px
    generator fits in memory beside a small classifier (callers split larger batches)."""
    return max(1, SYNTHESIS_PIXELS // G.size**2)


def synthesize(G, ws, batch: int = 256):
    """G(ws) with fixed noise and no gradient, in chunks of `batch` codes (at most codes_per_pass)."""
    batch = min(batch, codes_per_pass(G))
    with torch.no_grad():
        if not len(ws):
            return ws.new_zeros(0, 3, G.out_size, G.out_size)
        return torch.cat([G.synthesis(c, noise_mode="const") for c in ws.split(batch)])
