"""Do advmix's pSp and e4e encoders give the public code's W+ codes? Built from the public repositories on CPU.

    python bench/encoder_interop.py --e4e ~/src/encoder4editing --psp ~/src/pixel2style2pixel

Each argument is a checkout of the public repository (omertov/encoder4editing, eladrich/pixel2style2pixel; nothing
is downloaded here). In a subprocess per repository this script
1. puts a pure-PyTorch stand-in for `models.stylegan2.op` into sys.modules (the repositories compile CUDA ops when
   `models.stylegan2.model` is imported, and their encoders import EqualLinear from it): fused_leaky_relu and
   FusedLeakyReLU written here, upfirdn2d advmix's own (advmix.gan.networks);
2. builds the repository's encoder (IR-SE50, 18 W+ rows as for a 1024 px generator) with random weights and random
   BatchNorm statistics, so that eval-mode BatchNorm is exercised, and a random latent_avg;
3. saves it in the repository's checkpoint layout, loads that file with advmix.gan.encoders.load_public_encoder
   (strict=True), and encodes the same random faces with both.
It prints, per encoder, the max absolute W+ difference before latent_avg, relative to the standard deviation of
the public encoder's own output there (random weights give a small output, so an absolute tolerance would prove
little), and exits 1 when that ratio exceeds 1e-3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

TOLERANCE = 1e-3  # of the public encoder's output std
KINDS = {"e4e": "Encoder4Editing", "psp": "GradualStyleEncoder"}


def op_stand_in() -> types.ModuleType:
    """`models.stylegan2.op` in pure PyTorch: the names the public model module imports."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2 ** 0.5):
        return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.ndim - 2)), negative_slope) * scale

    class FusedLeakyReLU(nn.Module):
        def __init__(self, channel, negative_slope=0.2, scale=2 ** 0.5):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(channel))
            self.negative_slope, self.scale = negative_slope, scale

        def forward(self, x):
            return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

    from advmix.gan.networks import upfirdn2d  # rosinality's semantics (up, down, pad on both axes), plain torch

    module = types.ModuleType("models.stylegan2.op")
    module.FusedLeakyReLU, module.fused_leaky_relu, module.upfirdn2d = FusedLeakyReLU, fused_leaky_relu, upfirdn2d
    return module


def compare(repo: Path, kind: str, seed: int = 0) -> dict:
    """Build `kind` from `repo`, save it in the public layout, load it in advmix, compare on random faces."""
    import torch

    from advmix.gan.encoders import encode, load_public_encoder

    sys.modules["models.stylegan2.op"] = op_stand_in()
    sys.path.insert(0, str(repo))
    from models.encoders import psp_encoders

    torch.manual_seed(seed)
    opts = types.SimpleNamespace(stylegan_size=1024, output_size=1024, n_styles=18, input_nc=3)
    public = getattr(psp_encoders, KINDS[kind])(50, "ir_se", opts)
    with torch.no_grad():  # random BatchNorm statistics: eval mode then reads them
        for m in public.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    public.eval()
    latent_avg = torch.randn(18, 512)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.pt"
        torch.save({"state_dict": {f"encoder.{k}": v for k, v in public.state_dict().items()},
                    "opts": {"encoder_type": KINDS[kind], "stylegan_size": 1024, "output_size": 1024, "input_nc": 3,
                             "start_from_latent_avg": True, "learn_in_w": False},
                    "latent_avg": latent_avg}, path)
        ours, our_avg = load_public_encoder(path, n_latent=18)
    faces = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        theirs = public(faces)
        mine = encode(ours, our_avg, faces) - our_avg
    diff = (mine - theirs).abs().max().item()
    std = theirs.std().item()
    return {"encoder": kind, "type": KINDS[kind], "commit_dir": str(repo), "shape": list(theirs.shape),
            "max_abs_difference": diff, "output_std": std, "ratio": diff / std,
            "latent_avg_equal": bool(torch.equal(our_avg, latent_avg)), "ok": diff / std <= TOLERANCE}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--e4e", type=Path, help="a checkout of omertov/encoder4editing")
    ap.add_argument("--psp", type=Path, help="a checkout of eladrich/pixel2style2pixel")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "REPO"), help=argparse.SUPPRESS)  # the subprocess's job
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(compare(Path(args.one[1]), args.one[0])))
        return 0
    results = []
    for kind in KINDS:  # one process each: both repositories are the package `models`
        repo = getattr(args, kind)
        if repo is None:
            continue
        if not (repo / "models" / "encoders" / "psp_encoders.py").is_file():
            sys.exit(f"error: --{kind} {repo}: no models/encoders/psp_encoders.py; give a checkout of the repository")
        out = subprocess.run([sys.executable, __file__, "--one", kind, str(repo)], capture_output=True, text=True,
                             check=False)
        if out.returncode:
            sys.exit(f"error: {kind}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    if not results:
        sys.exit("error: give --e4e and/or --psp")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
