"""Classic augmentation of real photos: what a user would do without skuforge, so the baseline to beat.

Random resized crop (35-100 % of the area, aspect 3:4-4:3), horizontal flip, and colour jitter
(brightness, contrast, saturation +-30 %), as torchvision's ``RandomResizedCrop`` +
``RandomHorizontalFlip`` + ``ColorJitter`` would, drawn from a seeded generator; where ten crop draws
miss the frame (a wide panorama) it takes the centre square, not torchvision's whole frame.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance


def classic_augment(image: Image.Image, rng: np.random.Generator, size_px: int = 256) -> Image.Image:
    """One augmented copy of ``image`` (RGB), size_px x size_px."""
    width, height = image.size
    for _ in range(10):
        area = width * height * float(rng.uniform(0.35, 1.0))
        aspect = math.exp(float(rng.uniform(math.log(3 / 4), math.log(4 / 3))))
        crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            x0, y0 = int(rng.integers(width - crop_w + 1)), int(rng.integers(height - crop_h + 1))
            break
    else:  # the centre square. torchvision keeps the whole frame here (cut to the 3:4-4:3 range);
        # not changed, as the committed figures' augmentations were drawn this way
        crop_w = crop_h = min(width, height)
        x0, y0 = (width - crop_w) // 2, (height - crop_h) // 2
    out = image.convert("RGB").resize(
        (size_px, size_px), Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h)
    )
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in rng.permutation(3):
        factor = float(rng.uniform(0.7, 1.3))
        if enhancer == 0:
            out = ImageEnhance.Brightness(out).enhance(factor)
        elif enhancer == 1:
            out = ImageEnhance.Contrast(out).enhance(factor)
        else:
            out = ImageEnhance.Color(out).enhance(factor)
    return out
