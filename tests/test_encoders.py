"""The public pSp / e4e encoders rebuilt in plain PyTorch: a checkpoint in their layout loads with strict=True, gives
the codes of the module it was saved from, carries a decoder advmix reads as a generator, and bad files get one
line each. (bench/encoder_interop.py compares against the public repositories' own code.)"""

import pytest
import torch

from advmix.gan.checkpoints import load_generator
from advmix.gan.encoders import EncoderError, StyleEncoder, encode, load_public_encoder, save_public_layout
from advmix.gan.networks import Generator


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An e4e and a pSp checkpoint for a 16 px generator (6 W+ rows), random weights and BatchNorm statistics."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoders")
    G = Generator(16, style_dim=512, n_mlp=2, channel_base=256, channel_max=32)
    out = {}
    for mode in ("Encoder4Editing", "GradualStyleEncoder"):
        enc = StyleEncoder(6, mode)
        with torch.no_grad():
            for m in enc.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
        path = folder / f"{mode}.pt"
        save_public_layout(path, enc.eval(), torch.randn(6, 512), G.state_dict(), size=16)
        out[mode] = (path, enc)
    return out, G


@pytest.mark.parametrize("mode", ["Encoder4Editing", "GradualStyleEncoder"])
def test_a_public_layout_checkpoint_loads_strictly_and_encodes_as_saved(saved, mode):
    files, G = saved
    path, enc = files[mode]
    loaded, latent_avg = load_public_encoder(path, n_latent=G.n_latent)
    assert loaded.mode == mode and latent_avg.shape == (6, 512)
    faces = torch.rand(2, 3, 32, 32) * 2 - 1  # resized to 256 inside
    codes = encode(loaded, latent_avg, faces)
    assert codes.shape == (2, 6, 512) and torch.isfinite(codes).all()
    with torch.no_grad():
        big = torch.nn.functional.interpolate(faces, size=(256, 256), mode="bilinear", antialias=True)
        assert torch.allclose(codes, enc(big) + latent_avg, atol=1e-5)
    if mode == "Encoder4Editing":  # one w for every row, plus offsets: row 0 is that w alone
        with torch.no_grad():
            c3, _, _ = enc.pyramid(big)
            assert torch.allclose(codes[:, 0] - latent_avg[0], enc.styles[0](c3), atol=1e-5)
    G2, _, info = load_generator(path)  # the decoder in the same file serves as gan.pretrained
    assert info["format"] == "psp" and G2.size == 16


def test_bad_encoder_files_get_one_line(saved, tmp_path):
    files, G = saved
    path, enc = files["GradualStyleEncoder"]
    with pytest.raises(EncoderError, match="predicts 6 W\\+ rows but the generator has 18"):
        load_public_encoder(path, n_latent=18)
    other = tmp_path / "g.pt"
    torch.save({"g_ema": G.state_dict()}, other)
    with pytest.raises(EncoderError, match="not a pSp or e4e checkpoint"):
        load_public_encoder(other)
    restyle = tmp_path / "restyle.pt"
    state = {f"encoder.{k}": v for k, v in StyleEncoder(6, "GradualStyleEncoder", input_channels=6).state_dict().items()}
    torch.save({"state_dict": state, "opts": {"encoder_type": "BackboneEncoder", "n_iters_per_batch": 5}}, restyle)
    with pytest.raises(EncoderError, match="ReStyle encoder .*6 input channels.* not supported"):
        load_public_encoder(restyle)
    single = tmp_path / "w.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()},
                "opts": {"encoder_type": "BackboneEncoderUsingLastLayerIntoW"}}, single)
    with pytest.raises(EncoderError, match="not a W\\+ encoder"):
        load_public_encoder(single)
