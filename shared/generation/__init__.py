"""Generation backends: the interface (backend.py), compositing, and diffusion inpainting."""
