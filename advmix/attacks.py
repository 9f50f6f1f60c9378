"""The inner maximisations: AdvMix, RandMix and pixel-space PGD, and AugMix as a baseline augmentation. Each
returns transformed images with the original labels, and each has the signature
`attack(model, batch, latents, G, config, rng)`.

- `advmix_attack`: K partners per example from the latent bank under the partner rule, the loss of every hard
  mix (alpha = 1) in ONE batched generator pass over N*K codes, the worst partner kept, then `steps` projected
  signed-gradient ascent steps on alpha in [0, 1]^|layers| through the frozen generator. The returned image is
  the worst iterate seen per example (the hard mix included), so the attack never ends weaker than it started.
- `randmix`: the same perturbation set sampled at random (a uniform partner under the rule, uniform alpha).
- `pgd_linf`: l-inf PGD in pixel space with a random start. Images are in [-1, 1], so epsilon and the step
  size (given in [0, 1] pixel units, 8/255 by default) are doubled.
- `augmix`: torchvision's AugMix per image (its own random chains); neither the model nor the codes are used.
- `colorjitter`, `huejitter`: torchvision's ColorJitter per image at two strengths (the common one and full hue):
  the control that asks whether a colour nuisance needs a generator at all.

A generator larger than the data renders at the data's resolution (Generator.render_at: synthesis at its own size,
then one antialiased, differentiable resize), and every attack synthesises at most codes_per_pass(G) codes at once.

The optional residual keeps what inversion lost: x_tilde = G(w_mix) + (x - G(w_x)), w_x the example's own code. It
is fixed for an example (G is frozen), so a caller that has it passes it in `Batch.residual` (`residual_of` for a
batch, `residuals` for a whole split); otherwise each attack synthesises it.
Mixed images are clamped to [-1, 1], the range of the real images. G is put in eval mode with gradients off;
the classifier is put in eval mode for the attack and given back in the mode it came in. All randomness comes
from `rng` (a CPU torch.Generator), so an attack is reproducible for a fixed generator state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import AugMix, ColorJitter

from advmix.images import from_uint8, to_tensor, to_uint8
from advmix.mixing import codes_per_pass, mix, partner_key, synthesize
from advmix.models import eval_mode
from advmix.params import TrainParams


@dataclass(frozen=True)
class AttackConfig:
    """Everything an attack needs besides the model, the batch, the bank and G. No defaults of its own: the values
    come from params.yaml (`from_params`), whose keys advmix/params.py documents."""

    layers: tuple[int, ...]  # W+ indices that may move (mixing.layers, resolved)
    partners: str  # mixing.partners: any | same_label
    residual: bool  # train.residual: add x - G(w_x) back to every mix
    k: int  # train.advmix.partners_k: AdvMix's partners tried per example
    strata: int  # train.advmix.strata: partners drawn one per k-means stratum of the bank (0: uniform)
    steps: int  # train.advmix.steps: signed-gradient steps on alpha
    step_size: float  # train.advmix.step_size: the alpha step
    epsilon: float  # train.linf.epsilon: PGD's l-inf radius in [0, 1] pixel units
    pgd_steps: int  # train.linf.steps
    pgd_step_size: float  # train.linf.step_size, in [0, 1] pixel units
    augmix: tuple[int, int, int]  # train.augmix: severity, width, depth
    colorjitter: tuple[float, float, float, float]  # train.colorjitter: brightness, contrast, saturation, hue
    huejitter: tuple[float, float, float, float]  # train.huejitter: the same, at full hue

    @classmethod
    def from_params(cls, t: TrainParams, partners: str, layers: Sequence[int]) -> AttackConfig:
        """From train.* (`t`), mixing.partners and the resolved mixing layers."""
        return cls(layers=tuple(int(i) for i in layers), partners=partners, residual=t.residual,
                   k=t.advmix.partners_k, strata=t.advmix.strata, steps=t.advmix.steps, step_size=t.advmix.step_size,
                   epsilon=t.linf.epsilon, pgd_steps=t.linf.steps, pgd_step_size=t.linf.step_size,
                   augmix=(t.augmix.severity, t.augmix.width, t.augmix.depth),
                   colorjitter=t.colorjitter.strengths(), huejitter=t.huejitter.strengths())


@dataclass
class Batch:
    x: Tensor  # [N, 3, H, W] in [-1, 1]
    y: Tensor  # [N] class indices
    w: Tensor | None = None  # [N, L, D] the examples' own W+ codes (needed by the mixing attacks)
    index: Tensor | None = None  # [N] their rows in the partner bank, so that nobody is its own partner
    residual: Tensor | None = None  # [N, 3, H, W] x - G(w), when the caller has it (else synthesised per attack)


class LatentBank:
    """The W+ codes partners are drawn from (the train split), with their labels for the partner rule.

    Partners are drawn uniformly from the rule's pool, or, with `strata` > 0, stratified: the pool is split into
    `strata` k-means clusters of its codes on the mixing rows, and the K draws of an example visit the clusters in
    turn (one each when K = strata). Uniform draws reach a nuisance value held by 5% of a class in only
    1 - 0.95^K of the examples; the clusters put such a value within reach of every example without any
    attribute label. `seed` drives the k-means initialisation.
    """

    def __init__(self, w: Tensor, labels: Tensor | Sequence[int], seed: int = 0) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if w.ndim != 3 or len(w) != len(labels):
            raise ValueError(f"latent bank: expected w [M, L, D] and M labels, got {list(w.shape)} and {len(labels)}")
        self.w = w
        self.labels = labels
        self.seed = seed
        self._pools: dict[tuple, _Pools] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> LatentBank:
        self.w = self.w.to(device)
        return self

    def pools(self, rule: str, strata: int = 0, layers: Sequence[int] = ()) -> _Pools:
        """The rule's pools (one per class under same_label, one under any), split into strata; cached."""
        key = (rule, strata, tuple(layers) if strata else ())
        if key not in self._pools:
            base = partner_key(self.labels, rule)
            sub = torch.zeros_like(base)
            if strata:
                if not layers:
                    raise ValueError("stratified partners need the mixing layers")
                codes = self.w[:, list(layers)].detach().float().cpu().flatten(1)
                g = torch.Generator().manual_seed(self.seed * 1000 + 41)
                for b in base.unique().tolist():
                    rows = (base == b).nonzero().flatten()
                    sub[rows] = kmeans(codes[rows], strata, g)
            self._pools[key] = _Pools(base, sub)
        return self._pools[key]

    def partners(self, y: Tensor, k: int, rule: str, rng: torch.Generator, index: Tensor | None = None,
                 strata: int = 0, layers: Sequence[int] = ()) -> Tensor:
        """[N, k] bank rows drawn under the rule (`any` or `same_label`), uniformly or stratified (see the class),
        never the example itself (when `index` gives its row) unless nobody else qualifies."""
        pools = self.pools(rule, strata, layers)
        y = y.detach().cpu().long()
        n = len(y)
        base = partner_key(y, rule)
        missing = sorted({c for c in base.tolist() if c >= len(pools.n_sub) or pools.n_sub[c] == 0})
        if missing:
            raise ValueError(f"partner rule {rule}: the bank has no example of class(es) {missing}")
        u = torch.rand(n, k, generator=rng)
        pool = pools.first[base][:, None].expand(n, k)
        if strata:  # draw j of an example visits stratum (offset + j) mod the number of strata of its pool
            n_sub = pools.n_sub[base][:, None]
            offset = (torch.rand(n, 1, generator=rng) * n_sub).long()
            pool = pool + (offset + torch.arange(k)) % n_sub
        if index is not None:
            own = index.detach().cpu().long()
            own_in_pool = pools.pool_of[own][:, None] == pool
            own_pos = pools.position[own][:, None]
        else:
            own_in_pool = torch.zeros(n, k, dtype=torch.bool)
            own_pos = torch.zeros(n, 1, dtype=torch.long)
        size = pools.count[pool] - own_in_pool.long()
        pos = torch.minimum((u * size).long(), (size - 1).clamp(min=0))
        pos = pos + (own_in_pool & (pos >= own_pos)).long()  # skip the example itself
        rows = pools.table[pool, pos]
        if index is not None:
            rows = torch.where(size > 0, rows, own[:, None])  # nobody else qualifies: the mix is the identity
        return rows


class _Pools:
    """Bank rows grouped into pools (id = first[base] + stratum) in a padded table, with each row's position."""

    def __init__(self, base: Tensor, sub: Tensor) -> None:
        n_base = int(base.max()) + 1 if len(base) else 0
        self.n_sub = torch.zeros(n_base, dtype=torch.long)
        for b in base.unique().tolist():
            self.n_sub[b] = int(sub[base == b].max()) + 1
        self.first = torch.cumsum(self.n_sub, 0) - self.n_sub
        self.pool_of = self.first[base] + sub
        n_pools = int(self.n_sub.sum())
        self.count = torch.bincount(self.pool_of, minlength=n_pools)
        order = torch.argsort(self.pool_of, stable=True)
        starts = torch.cumsum(self.count, 0) - self.count
        self.position = torch.empty_like(base)
        self.position[order] = torch.arange(len(base)) - starts[self.pool_of[order]]
        self.table = torch.zeros(n_pools, int(self.count.max()) if len(base) else 0, dtype=torch.long)
        self.table[self.pool_of[order], self.position[order]] = order


def kmeans(x: Tensor, c: int, g: torch.Generator, iters: int = 25, restarts: int = 4) -> Tensor:
    """Cluster ids 0..c'-1 (c' <= c, no empty cluster) of the rows of x, standardised per column: the lowest
    within-cluster sum of squares of `restarts` k-means++ starts."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6) if len(x) > 1 else x
    c = min(c, len(x))
    best, best_sse = None, float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(len(x), (1,), generator=g)]
        for _ in range(1, c):  # k-means++: the next centre drawn far from the chosen ones
            d2 = torch.cdist(x, centres).min(1).values.pow(2)
            if float(d2.sum()) == 0.0:
                break
            centres = torch.cat([centres, x[torch.multinomial(d2, 1, generator=g)]])
        for _ in range(iters):
            assign = torch.cdist(x, centres).argmin(1)
            centres = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j]
                                   for j in range(len(centres))])
        d = torch.cdist(x, centres)
        sse = float(d.min(1).values.pow(2).sum())
        if sse < best_sse:
            best, best_sse = d.argmin(1), sse
    return torch.unique(best, return_inverse=True)[1]  # renumbered without empty clusters


def _frozen(G: nn.Module) -> nn.Module:
    G.eval().requires_grad_(False)
    return G


def _compose(img: Tensor, residual: Tensor | None) -> Tensor:
    img = img.float()
    if residual is not None:
        img = img + residual
    return img.clamp(-1.0, 1.0)


def residual_of(G: nn.Module, batch: Batch) -> Tensor:
    """x - G(w_x): what inversion lost, added back to every mix of the example (the batch's own, if it has one)."""
    if batch.residual is not None:
        return batch.residual.float()
    with torch.no_grad():
        return batch.x.float() - synthesize(G, batch.w, len(batch.w)).float()


def residuals(G: nn.Module, images, w: Tensor, chunk: int = 256) -> Tensor:
    """x - G(w) of every row of a split (uint8 N x H x W x 3 images, their codes), synthesised once in chunks of
    `chunk` codes; on w's device, float32."""
    G = _frozen(G)
    chunk = min(chunk, codes_per_pass(G))
    out = [torch.empty(0, 3, G.out_size, G.out_size, device=w.device)]
    with torch.no_grad():
        for start in range(0, len(w), chunk):
            x = to_tensor(images[start:start + chunk]).to(w.device)
            out.append(x - G.synthesis(w[start:start + chunk], noise_mode="const").float())
    return torch.cat(out)


def _parts(G: nn.Module, n: int) -> list[slice]:
    """Slices of n codes, each one generator pass (codes_per_pass), so that a large generator fits in memory."""
    per = codes_per_pass(G)
    return [slice(lo, lo + per) for lo in range(0, n, per)]


def _losses(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x).float(), y, reduction="none")


def _need_codes(batch: Batch, cfg: AttackConfig, name: str) -> None:
    if batch.w is None:
        raise ValueError(f"{name}: the batch has no W+ codes (Batch.w)")
    if not cfg.layers:
        raise ValueError(f"{name}: no mixing layers in the config")


def advmix_attack(model: nn.Module, batch: Batch, latents: LatentBank, G: nn.Module, cfg: AttackConfig,
                  rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """The worst mix per example: best of K hard swaps, then `cfg.steps` signed-gradient steps on alpha."""
    _need_codes(batch, cfg, "advmix")
    G = _frozen(G)
    layers = list(cfg.layers)
    x, y, w_x = batch.x, batch.y, batch.w
    n, k = len(y), cfg.k
    rows = torch.arange(n, device=x.device)
    with eval_mode(model):
        residual = residual_of(G, batch) if cfg.residual else None
        with torch.no_grad():  # every hard mix in one generator pass of N*K codes
            cand = latents.partners(y, k, cfg.partners, rng, batch.index, cfg.strata, layers).to(latents.w.device)
            w_p = latents.w[cand].to(w_x.device, w_x.dtype)  # [N, K, L, D]
            ws = mix(w_x.repeat_interleave(k, 0), w_p.flatten(0, 1), 1.0, layers)
            imgs = _compose(synthesize(G, ws, len(ws)), None if residual is None else residual.repeat_interleave(k, 0))
            loss = _losses(model, imgs, y.repeat_interleave(k, 0)).view(n, k)
            worst = loss.argmax(1)
            w_b = w_p[rows, worst]
            best_loss = loss[rows, worst]
            best_x = imgs.view(n, k, *imgs.shape[1:])[rows, worst]
        alpha = torch.ones(n, len(layers), device=x.device, dtype=w_x.dtype)
        for step in range(cfg.steps + 1):
            last = step == cfg.steps
            for part in _parts(G, n):  # an example's alpha moves only its own image: parts are independent
                with torch.set_grad_enabled(not last):
                    a = alpha[part].detach().requires_grad_(not last)
                    cur = _compose(G.synthesis(mix(w_x[part], w_b[part], a, layers), noise_mode="const"),
                                   None if residual is None else residual[part])
                    loss = _losses(model, cur, y[part])
                    if not last:
                        (grad,) = torch.autograd.grad(loss.sum(), a)
                with torch.no_grad():
                    better = loss.detach() > best_loss[part]
                    best_loss[part] = torch.where(better, loss.detach(), best_loss[part])
                    best_x[part] = torch.where(better[:, None, None, None], cur.detach(), best_x[part])
                    if not last:
                        alpha[part] = (alpha[part] + cfg.step_size * grad.sign()).clamp(0.0, 1.0)
    return best_x.detach(), y


def randmix(model: nn.Module, batch: Batch, latents: LatentBank, G: nn.Module, cfg: AttackConfig,
            rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random member of the perturbation set per example (the model is not consulted)."""
    _need_codes(batch, cfg, "randmix")
    G = _frozen(G)
    x, y, w_x = batch.x, batch.y, batch.w
    with torch.no_grad():
        residual = residual_of(G, batch) if cfg.residual else None
        cand = latents.partners(y, 1, cfg.partners, rng, batch.index)[:, 0].to(latents.w.device)
        alpha = torch.rand(len(y), len(cfg.layers), generator=rng).to(x.device, w_x.dtype)
        ws = mix(w_x, latents.w[cand].to(w_x.device, w_x.dtype), alpha, list(cfg.layers))
        out = _compose(synthesize(G, ws, len(ws)), residual)
    return out, y


def pgd_linf(model: nn.Module, batch: Batch, latents: LatentBank | None, G: nn.Module | None, cfg: AttackConfig,
             rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """l-inf PGD from a uniform random start; |x_adv - x|_inf <= 2 * epsilon in [-1, 1] units."""
    eps, step = 2.0 * cfg.epsilon, 2.0 * cfg.pgd_step_size
    x0, y = batch.x.detach().float(), batch.y
    start = (torch.rand(x0.shape, generator=rng) * 2 - 1).to(x0.device) * eps
    x = (x0 + start).clamp(-1.0, 1.0)
    with eval_mode(model):
        for _ in range(cfg.pgd_steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(_losses(model, x, y).sum(), x)
            with torch.no_grad():
                x = x + step * grad.sign()
                x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(-1.0, 1.0)
    return x.detach(), y


def augmix(model: nn.Module, batch: Batch, latents: LatentBank | None, G: nn.Module | None, cfg: AttackConfig,
           rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """AugMix (torchvision) on each image; its random draws are seeded from `rng`, the global RNG is left alone."""

    severity, width, depth = cfg.augmix
    aug = AugMix(severity=severity, mixture_width=width, chain_depth=depth)
    x8 = torch.from_numpy(to_uint8(batch.x)).permute(0, 3, 1, 2)  # AugMix reads uint8 images
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([aug(img) for img in x8])  # one draw of chains per image, not one per batch
    return from_uint8(out).to(batch.x.device, batch.x.dtype), batch.y


def _jitter(batch: Batch, strengths: tuple[float, float, float, float], rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """ColorJitter (torchvision) on each image with its own draw; seeded from `rng`, the global RNG left alone."""
    brightness, contrast, saturation, hue = strengths
    jitter = ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    x01 = (batch.x.detach().float().cpu() + 1.0) / 2.0  # ColorJitter reads [0, 1] floats
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([jitter(img) for img in x01])  # one draw of factors per image, not one per batch
    return (out * 2.0 - 1.0).clamp(-1.0, 1.0).to(batch.x.device, batch.x.dtype), batch.y


def colorjitter(model: nn.Module, batch: Batch, latents: LatentBank | None, G: nn.Module | None, cfg: AttackConfig,
                rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """ColorJitter at the common strength (brightness, contrast, saturation 0.4, hue 0.1 by default)."""
    return _jitter(batch, cfg.colorjitter, rng)


def huejitter(model: nn.Module, batch: Batch, latents: LatentBank | None, G: nn.Module | None, cfg: AttackConfig,
              rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """ColorJitter at full hue (hue 0.5 by default): every hue reachable."""
    return _jitter(batch, cfg.huejitter, rng)


Attack = Callable[[nn.Module, Batch, "LatentBank | None", "nn.Module | None", AttackConfig, torch.Generator],
                  tuple[Tensor, Tensor]]
ATTACKS: dict[str, Attack] = {"advmix": advmix_attack, "randmix": randmix, "linf": pgd_linf, "augmix": augmix,
                               "colorjitter": colorjitter, "huejitter": huejitter}
