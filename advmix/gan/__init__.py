"""StyleGAN2 in pure PyTorch (no compiled ops): networks, checkpoint readers and writers."""
