"""Photos for the evaluation and bench tests: ``shelf_photo``, a photo with structure at every scale,
the kind the leakage checks' perceptual hash is made for (the flat colour photos give it nothing); and
``one_torch_thread`` (from ``tests/support/threads.py``), an autouse fixture a test module takes by
importing it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.support.threads import one_torch_thread  # noqa: F401 (re-exported: autouse where imported)


def shelf_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo with structure at every scale (waves of light, boxes), unlike the flat colour photos:
    what a perceptual hash is made for."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    wx, wy, phase = rng.uniform(8, 30), rng.uniform(8, 30), rng.uniform(0, 6.3)
    grey = 128 + 50 * np.sin(x / wx + phase) * np.cos(y / wy) + 30 * np.sin((x + y) / rng.uniform(15, 40))
    pixels = np.repeat(grey[..., None], 3, axis=2)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        pixels[y0 : y0 + int(rng.integers(20, 80)), x0 : x0 + int(rng.integers(20, 80))] *= rng.uniform(
            0.5, 1.2, 3
        )
    pixels += rng.normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
