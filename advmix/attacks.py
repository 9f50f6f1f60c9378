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

The optional residual keeps what inversion lost: x_tilde = G(w_mix) + (x - G(w_x)), w_x the example's own code.
Mixed images are clamped to [-1, 1], the range of the real images. G is put in eval mode with gradients off;
the classifier is put in eval mode for the attack and given back in the mode it came in. All randomness comes
from `rng` (a CPU torch.Generator), so an attack is reproducible for a fixed generator state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmix.mixing import mix

PARTNER_RULES = ("any", "same_label")


@dataclass(frozen=True)
class AttackConfig:
    """Everything an attack needs besides the model, the batch, the bank and G."""

    layers: tuple[int, ...] = ()  # W+ indices that may move (mixing.layers, resolved)
    partners: str = "any"  # mixing.partners
    residual: bool = False  # train.residual
    k: int = 4  # AdvMix: partners tried per example
    steps: int = 5  # AdvMix: signed-gradient steps on alpha
    step_size: float = 0.25  # AdvMix: alpha step
    epsilon: float = 8 / 255  # PGD: l-inf radius in [0, 1] pixel units
    pgd_steps: int = 5
    pgd_step_size: float = 2 / 255  # in [0, 1] pixel units
    augmix: tuple[int, int, int] = (3, 3, -1)  # AugMix severity, width, depth

    @classmethod
    def from_params(cls, p, layers: Sequence[int]) -> AttackConfig:
        """From a Params object (mixing.partners, train.*) and the resolved mixing layers."""
        t = p.train
        return cls(layers=tuple(int(i) for i in layers), partners=p.mixing.partners, residual=t.residual,
                   k=t.advmix.partners_k, steps=t.advmix.steps, step_size=t.advmix.step_size,
                   epsilon=t.linf.epsilon, pgd_steps=t.linf.steps, pgd_step_size=t.linf.step_size,
                   augmix=(t.augmix.severity, t.augmix.width, t.augmix.depth))


@dataclass
class Batch:
    x: Tensor  # [N, 3, H, W] in [-1, 1]
    y: Tensor  # [N] class indices
    w: Tensor | None = None  # [N, L, D] the examples' own W+ codes (needed by the mixing attacks)
    index: Tensor | None = None  # [N] their rows in the partner bank, so that nobody is its own partner


class LatentBank:
    """The W+ codes partners are drawn from (the train split), with their labels for the partner rule."""

    def __init__(self, w: Tensor, labels: Tensor | Sequence[int]) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if w.ndim != 3 or len(w) != len(labels):
            raise ValueError(f"latent bank: expected w [M, L, D] and M labels, got {list(w.shape)} and {len(labels)}")
        self.w = w
        self.labels = labels
        # rows of each class in a padded table, and each row's position inside its class
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        self.count = torch.bincount(labels, minlength=n_classes)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(self.count, 0) - self.count
        self.position = torch.empty_like(labels)
        self.position[order] = torch.arange(len(labels)) - starts[labels[order]]
        self.table = torch.zeros(n_classes, int(self.count.max()) if len(labels) else 0, dtype=torch.long)
        self.table[labels[order], self.position[order]] = order

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> LatentBank:
        self.w = self.w.to(device)
        return self

    def partners(self, y: Tensor, k: int, rule: str, rng: torch.Generator, index: Tensor | None = None) -> Tensor:
        """[N, k] bank rows drawn uniformly under the rule (`any` or `same_label`), never the example itself
        (when `index` gives its row) unless nobody else qualifies."""
        if rule not in PARTNER_RULES:
            raise ValueError(f"partner rule {rule!r}: expected one of {PARTNER_RULES}")
        y = y.detach().cpu().long()
        n = len(y)
        if rule == "any":  # one pool holding every row, in row order
            table, count, position = torch.arange(len(self))[None], torch.tensor([len(self)]), torch.arange(len(self))
            pool_of = torch.zeros(n, dtype=torch.long)
        else:
            missing = sorted({c for c in y.tolist() if c >= len(self.count) or self.count[c] == 0})
            if missing:
                raise ValueError(f"partner rule same_label: the bank has no example of class(es) {missing}")
            table, count, position, pool_of = self.table, self.count, self.position, y
        u = torch.rand(n, k, generator=rng)
        if index is not None:
            own = index.detach().cpu().long()
            own_in_pool = torch.ones(n, dtype=torch.bool) if rule == "any" else self.labels[own] == y
            own_pos = position[own]
        else:
            own_in_pool = torch.zeros(n, dtype=torch.bool)
            own_pos = torch.zeros(n, dtype=torch.long)
        size = (count[pool_of] - own_in_pool.long())[:, None]
        pos = torch.minimum((u * size).long(), (size - 1).clamp(min=0))
        pos = pos + (own_in_pool[:, None] & (pos >= own_pos[:, None])).long()  # skip the example itself
        rows = table[pool_of[:, None].expand(n, k), pos]
        if index is not None:
            rows = torch.where(size > 0, rows, own[:, None])  # nobody else qualifies: the mix is the identity
        return rows


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, back in the mode it came in after it."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _frozen(G: nn.Module) -> nn.Module:
    G.eval().requires_grad_(False)
    return G


def _compose(img: Tensor, residual: Tensor | None) -> Tensor:
    img = img.float()
    if residual is not None:
        img = img + residual
    return img.clamp(-1.0, 1.0)


def _residual(G: nn.Module, batch: Batch, cfg: AttackConfig) -> Tensor | None:
    if not cfg.residual:
        return None
    with torch.no_grad():
        return batch.x.float() - G.synthesis(batch.w, noise_mode="const").float()


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
        residual = _residual(G, batch, cfg)
        with torch.no_grad():  # every hard mix in one generator pass of N*K codes
            cand = latents.partners(y, k, cfg.partners, rng, batch.index).to(latents.w.device)
            w_p = latents.w[cand].to(w_x.device, w_x.dtype)  # [N, K, L, D]
            ws = mix(w_x.repeat_interleave(k, 0), w_p.flatten(0, 1), 1.0, layers)
            imgs = _compose(G.synthesis(ws, noise_mode="const"),
                            None if residual is None else residual.repeat_interleave(k, 0))
            loss = _losses(model, imgs, y.repeat_interleave(k, 0)).view(n, k)
            worst = loss.argmax(1)
            w_b = w_p[rows, worst]
            best_loss = loss[rows, worst]
            best_x = imgs.view(n, k, *imgs.shape[1:])[rows, worst]
        alpha = torch.ones(n, len(layers), device=x.device, dtype=w_x.dtype)
        for step in range(cfg.steps + 1):
            last = step == cfg.steps
            with torch.set_grad_enabled(not last):
                a = alpha.detach().requires_grad_(not last)
                cur = _compose(G.synthesis(mix(w_x, w_b, a, layers), noise_mode="const"), residual)
                loss = _losses(model, cur, y)
                if not last:
                    (grad,) = torch.autograd.grad(loss.sum(), a)
            with torch.no_grad():
                better = loss.detach() > best_loss
                best_loss = torch.where(better, loss.detach(), best_loss)
                best_x = torch.where(better[:, None, None, None], cur.detach(), best_x)
                if not last:
                    alpha = (alpha + cfg.step_size * grad.sign()).clamp(0.0, 1.0)
    return best_x.detach(), y


def randmix(model: nn.Module, batch: Batch, latents: LatentBank, G: nn.Module, cfg: AttackConfig,
            rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random member of the perturbation set per example (the model is not consulted)."""
    _need_codes(batch, cfg, "randmix")
    G = _frozen(G)
    x, y, w_x = batch.x, batch.y, batch.w
    with torch.no_grad():
        residual = _residual(G, batch, cfg)
        cand = latents.partners(y, 1, cfg.partners, rng, batch.index)[:, 0].to(latents.w.device)
        alpha = torch.rand(len(y), len(cfg.layers), generator=rng).to(x.device, w_x.dtype)
        ws = mix(w_x, latents.w[cand].to(w_x.device, w_x.dtype), alpha, list(cfg.layers))
        out = _compose(G.synthesis(ws, noise_mode="const"), residual)
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
    from torchvision.transforms import AugMix

    severity, width, depth = cfg.augmix
    aug = AugMix(severity=severity, mixture_width=width, chain_depth=depth)
    x8 = ((batch.x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([aug(img) for img in x8])  # one draw of chains per image, not one per batch
    return (out.float() / 127.5 - 1.0).to(batch.x.device, batch.x.dtype), batch.y


Attack = Callable[[nn.Module, Batch, "LatentBank | None", "nn.Module | None", AttackConfig, torch.Generator],
                  tuple[Tensor, Tensor]]
ATTACKS: dict[str, Attack] = {"advmix": advmix_attack, "randmix": randmix, "linf": pgd_linf, "augmix": augmix}
