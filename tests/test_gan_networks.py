"""StyleGAN2 networks: the rosinality state_dict layout, the W+ index map, and runtime behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from advmix.gan.networks import (
    ConvLayer,
    Discriminator,
    Generator,
    ModulatedConv2d,
    StyledConv,
    ToRGB,
    channels_for,
    make_kernel,
    stddev_group_size,
    upfirdn2d,
)

TINY = {"style_dim": 32, "n_mlp": 2, "channel_base": 512, "channel_max": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator(size: int = 16, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(size, **TINY)
    with torch.no_grad():  # non-zero noise strengths and biases, so that every parameter matters
        for name, p in G.named_parameters():
            if name.endswith(("noise.weight", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    return G


# ----------------------------------------------------------------------------------------------------------------
# The expected layout, written from the published rosinality/stylegan2-pytorch checkpoint key table


def rosinality_generator_shapes(size: int, style_dim: int = 512, n_mlp: int = 8, cm: int = 2) -> dict[str, tuple]:
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
    log_size = int(math.log2(size))
    shapes: dict[str, tuple] = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"] = (style_dim, style_dim)
        shapes[f"style.{i}.bias"] = (style_dim,)
    shapes["input.input"] = (1, table[4], 4, 4)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        shapes[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (cout,)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)

    def torgb(prefix: str, cin: int, up: bool) -> None:
        shapes[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)

    styled("conv1", table[4], table[4], up=False)
    torgb("to_rgb1", table[4], up=False)
    cin = table[4]
    for k in range(log_size - 2):
        cout = table[2 ** (k + 3)]
        styled(f"convs.{2 * k}", cin, cout, up=True)
        styled(f"convs.{2 * k + 1}", cout, cout, up=False)
        torgb(f"to_rgbs.{k}", cout, up=True)
        cin = cout
    for i in range((log_size - 2) * 2 + 1):
        r = 2 ** ((i + 5) // 2)
        shapes[f"noises.noise_{i}"] = (1, 1, r, r)
    return shapes


def expected_wplus_index(size: int) -> dict[str, int]:
    """Module name -> W+ index, per the notes: conv1 0; to_rgb1 and convs.0 1; convs.{2k+1} 2k+2; to_rgbs.{k} and
    convs.{2k+2} 2k+3."""
    n_up = int(math.log2(size)) - 2
    index = {"conv1": 0, "to_rgb1": 1}
    for k in range(n_up):
        index[f"convs.{2 * k}"] = 2 * k + 1
        index[f"convs.{2 * k + 1}"] = 2 * k + 2
        index[f"to_rgbs.{k}"] = 2 * k + 3
    return index


# ----------------------------------------------------------------------------------------------------------------


def test_channels_for_matches_rosinality_table():
    assert channels_for(1024, 32768, 512) == {
        4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32
    }  # fmt: skip
    assert channels_for(256, 16384, 512) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
    assert channels_for(32, 1024, 128) == {4: 128, 8: 128, 16: 64, 32: 32}
    with pytest.raises(ValueError):
        channels_for(48)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_wplus_length(size):
    with torch.device("meta"):
        G = Generator(size, **TINY)
    assert G.n_latent == 2 * int(math.log2(size)) - 2
    assert G.num_layers == 2 * int(math.log2(size)) - 3


@pytest.mark.parametrize("size", [16, 32])
def test_output_shape(size):
    G = tiny_generator(size)
    ws = torch.randn(2, G.n_latent, G.style_dim)
    img = G(ws)
    assert img.shape == (2, 3, size, size)
    assert torch.isfinite(img).all()
    assert G.synthesis(ws[:, 0]).shape == img.shape  # one w broadcast to every layer


@pytest.mark.parametrize("size, n_keys", [(256, 135), (1024, 171)])
def test_state_dict_matches_rosinality_layout(size, n_keys):
    with torch.device("meta"):
        G = Generator(size)
    sd = G.state_dict()
    expected = rosinality_generator_shapes(size)
    assert len(expected) == n_keys
    assert set(sd) == set(expected)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    buffers = {name for name, _ in G.named_buffers()}
    assert {k for k in expected if k.startswith("noises.") or k.endswith(".kernel")} == buffers


def test_kernels_and_init_follow_the_reference():
    G = tiny_generator(16)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k) / 64 * 4
    assert torch.equal(G.convs[0].conv.blur.kernel, k)
    assert torch.equal(G.to_rgbs[0].upsample.kernel, k)
    fresh = Generator(16, **TINY)
    assert torch.equal(fresh.conv1.conv.modulation.bias, torch.ones_like(fresh.conv1.conv.modulation.bias))
    assert fresh.conv1.noise.weight.item() == 0.0
    # mapping weights are stored raw: ~N(0, 1/lr_mul^2)
    assert 50 < fresh.style[1].weight.std().item() < 200


def test_modulated_conv_equals_grouped_reference():
    """The batch-shared computation equals rosinality's per-sample grouped convolution."""
    torch.manual_seed(1)

    def reference(m: ModulatedConv2d, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, cin, h, wd = x.shape
        s = m.modulation(w).view(n, 1, cin, 1, 1)
        weight = m.scale * m.weight * s
        if m.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(n, -1, 1, 1, 1)
        k = m.kernel_size
        if m.upsample:
            weight = weight.transpose(1, 2).reshape(n * cin, m.out_channels, k, k)
            out = F.conv_transpose2d(x.reshape(1, n * cin, h, wd), weight, stride=2, groups=n)
            return upfirdn2d(out.view(n, m.out_channels, *out.shape[2:]), m.blur.kernel, pad=(1, 1))
        weight = weight.view(n * m.out_channels, cin, k, k)
        out = F.conv2d(x.reshape(1, n * cin, h, wd), weight, padding=m.padding, groups=n)
        return out.view(n, m.out_channels, h, wd)

    for kwargs in ({}, {"upsample": True}, {"demodulate": False}):
        ksize = 1 if kwargs.get("demodulate") is False else 3
        m = ModulatedConv2d(6, 5, ksize, 16, **kwargs)
        with torch.no_grad():
            m.modulation.bias.add_(torch.randn(6))
        x, w = torch.randn(3, 6, 8, 8), torch.randn(3, 16)
        torch.testing.assert_close(m(x, w), reference(m, x, w), atol=1e-5, rtol=1e-5)


def test_folded_blur_equals_conv_then_blur():
    """The GPU path (blur folded into the (transposed) conv weight) equals the reference two-step path, for any
    4x4 filter, through the whole G and D, forward and backward."""
    torch.manual_seed(0)
    layers = [
        (ModulatedConv2d(5, 4, 3, 8, upsample=True), (torch.randn(2, 5, 8, 8), torch.randn(2, 8))),
        (ConvLayer(5, 4, 3, downsample=True), (torch.randn(2, 5, 8, 8),)),
        (ConvLayer(5, 4, 1, downsample=True, bias=False, activate=False), (torch.randn(2, 5, 8, 8),)),
    ]
    for module, args in layers:
        blur = module.blur if isinstance(module, ModulatedConv2d) else module[0]
        with torch.no_grad():
            blur.kernel.copy_(torch.rand(4, 4))  # asymmetric, so a wrong flip would show
        module.fuse_blur = False
        reference = module(*args)
        module.fuse_blur = True
        torch.testing.assert_close(module(*args), reference, atol=1e-5, rtol=1e-5)

    G, D = tiny_generator(32), Discriminator(32, channel_base=512, channel_max=64)
    ws = torch.randn(2, G.n_latent, G.style_dim, requires_grad=True)
    results = []
    for fuse in (False, True):
        for m in [*G.modules(), *D.modules()]:
            if hasattr(m, "fuse_blur"):
                m.fuse_blur = fuse
        ws.grad = None
        img = G(ws)
        logits = D(img)
        logits.sum().backward()
        results.append((img.detach(), logits.detach(), ws.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_upfirdn2d_upsample_matches_a_direct_computation():
    x = torch.randn(1, 2, 4, 4)
    k = make_kernel([1, 3, 3, 1]) * 4
    up = torch.zeros(1, 2, 8, 8)
    up[:, :, ::2, ::2] = x
    expected = F.conv2d(F.pad(up, [2, 1, 2, 1]), k.flip([0, 1]).expand(2, 1, 4, 4), groups=2)
    torch.testing.assert_close(upfirdn2d(x, k, up=2, pad=(2, 1)), expected)
    assert upfirdn2d(x, k, up=2, pad=(2, 1)).shape == (1, 2, 8, 8)


def test_wplus_index_to_layer_map():
    """Each styled layer reads exactly the W+ row the notes assign to it."""
    G = tiny_generator(32)
    ws = torch.randn(2, G.n_latent, G.style_dim)
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in G.named_modules():
        if isinstance(module, StyledConv | ToRGB):
            hooks.append(module.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[1])))
    G(ws)
    for h in hooks:
        h.remove()
    expected = expected_wplus_index(32)
    assert set(seen) == set(expected)
    for name, index in expected.items():
        assert torch.equal(seen[name], ws[:, index]), name


def test_every_wplus_row_changes_the_output():
    G = tiny_generator(16)
    ws = torch.randn(1, G.n_latent, G.style_dim)
    base = G(ws)
    for i in range(G.n_latent):  # including L-1, which drives only the final ToRGB
        ws2 = ws.clone()
        ws2[:, i] += 1.0
        assert (G(ws2) - base).abs().max() > 1e-4, f"W+ row {i} has no effect"


def test_noise_modes():
    G = tiny_generator(16)
    ws = torch.randn(2, G.n_latent, G.style_dim)
    a, b = G(ws, noise_mode="const"), G(ws, noise_mode="const")
    assert torch.equal(a, b)
    assert not torch.equal(G(ws, noise_mode="random"), G(ws, noise_mode="random"))
    none = G(ws, noise_mode="none")
    assert not torch.allclose(none, a)
    with torch.no_grad():
        for i in range(G.num_layers):
            getattr(G.noises, f"noise_{i}").zero_()
    torch.testing.assert_close(G(ws, noise_mode="const"), none)
    with pytest.raises(ValueError):
        G(ws, noise_mode="bogus")


def test_gradients_flow_to_every_wplus_row():
    G = tiny_generator(16)
    ws = torch.randn(2, G.n_latent, G.style_dim, requires_grad=True)
    G(ws).square().mean().backward()
    assert ws.grad is not None
    assert (ws.grad.abs().sum(dim=(0, 2)) > 0).all()
    assert all(p.grad is not None for n, p in G.named_parameters() if not n.startswith("style."))


def test_make_ws_mixing_and_truncation():
    G = tiny_generator(16)
    z, z2 = torch.randn(3, G.style_dim), torch.randn(3, G.style_dim)
    w, w2 = G.mapping(z), G.mapping(z2)
    ws = G.make_ws(z)
    assert ws.shape == (3, G.n_latent, G.style_dim)
    assert torch.equal(ws, w[:, None].expand_as(ws))
    mixed = G.make_ws(z, mix_z=z2, mix_index=2)
    assert torch.equal(mixed[:, :2], w[:, None].expand(-1, 2, -1))
    assert torch.equal(mixed[:, 2:], w2[:, None].expand(-1, G.n_latent - 2, -1))
    per_sample = G.make_ws(z, mix_z=z2, mix_index=torch.tensor([1, 3, G.n_latent]))
    assert torch.equal(per_sample[1, :3], w[1, None].expand(3, -1))
    assert torch.equal(per_sample[1, 3:], w2[1, None].expand(G.n_latent - 3, -1))
    assert torch.equal(per_sample[2], w[2, None].expand(G.n_latent, -1))
    torch.manual_seed(0)
    random_cut = G.make_ws(z, mix_z=z2)
    from_z2 = (random_cut[0] == w2[0]).all(dim=1)
    cut = int(from_z2.int().argmax())
    assert 1 <= cut <= G.n_latent - 1 and from_z2[cut:].all() and not from_z2[:cut].any()
    w_avg = torch.randn(G.style_dim)
    torch.testing.assert_close(G.make_ws(z, truncation=0.0, w_avg=w_avg), w_avg.expand(3, G.n_latent, -1))
    torch.testing.assert_close(G.make_ws(z, truncation=0.5, w_avg=w_avg), (w_avg + 0.5 * (ws - w_avg)))
    with pytest.raises(ValueError):
        G.make_ws(z, truncation=0.5)


def test_mean_latent_is_seeded():
    G = tiny_generator(16)
    a = G.mean_latent(512, generator=torch.Generator().manual_seed(3))
    b = G.mean_latent(512, generator=torch.Generator().manual_seed(3))
    assert a.shape == (G.style_dim,)
    assert torch.equal(a, b)


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 6, 7, 8])
def test_discriminator_batch_sizes(batch):
    torch.manual_seed(0)
    D = Discriminator(16, channel_base=512, channel_max=64)
    logits = D(torch.randn(batch, 3, 16, 16))
    assert logits.shape == (batch, 1)
    assert torch.isfinite(logits).all()


def test_stddev_group_size():
    assert [stddev_group_size(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12)] == [1, 2, 3, 4, 1, 3, 1, 4, 3, 4]


def test_discriminator_keys_follow_rosinality():
    with torch.device("meta"):
        D = Discriminator(256)
    keys = set(D.state_dict())
    assert {"convs.0.0.weight", "convs.0.1.bias", "final_conv.0.weight", "final_conv.1.bias"} <= keys
    assert {"final_linear.0.weight", "final_linear.0.bias", "final_linear.1.weight", "final_linear.1.bias"} <= keys
    for j in range(1, 7):
        assert {f"convs.{j}.conv1.0.weight", f"convs.{j}.conv1.1.bias", f"convs.{j}.conv2.0.kernel"} <= keys
        assert {f"convs.{j}.conv2.1.weight", f"convs.{j}.conv2.2.bias"} <= keys
        assert {f"convs.{j}.skip.0.kernel", f"convs.{j}.skip.1.weight"} <= keys
    assert len(keys) == 4 + 6 * 7 + 4


def test_channels_last_gives_the_same_result():
    G = tiny_generator(16)
    D = Discriminator(16, channel_base=512, channel_max=64)
    ws = torch.randn(3, G.n_latent, G.style_dim)
    img, logits = G(ws), D(G(ws))
    G.to(memory_format=torch.channels_last)
    D.to(memory_format=torch.channels_last)
    img_cl = G(ws)
    assert img_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(img_cl, img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D(img_cl), logits, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_runs_forward_and_backward():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    G = tiny_generator(16).to(device)
    D = Discriminator(16, channel_base=512, channel_max=64).to(device)
    ws = torch.randn(4, G.n_latent, G.style_dim, device=device, requires_grad=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        img = G(ws, noise_mode="random")
        loss = F.softplus(-D(img)).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(ws.grad).all()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Generator(24, **TINY)
    with pytest.raises(ValueError):
        Generator(16, **TINY, channels={4: 8, 8: 8})  # 16 missing
    G = tiny_generator(16)
    with pytest.raises(ValueError):
        G(torch.randn(1, G.n_latent + 1, G.style_dim))
