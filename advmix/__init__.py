"""advmix: adversarial mixing with disentangled representations (Gowal et al., CVPR 2020)."""

__version__ = "0.1.0"
