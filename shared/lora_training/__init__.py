"""LoRA training for the diffusion backend: the training-set recipe and the training loop."""
