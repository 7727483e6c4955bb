"""Pixels read a strip at a time: the gate's images and every mask get the values np.asarray gave."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import shared.images
from shared.images import decode_image, decode_mask, pixel_array


def _image(mode: str, width: int, height: int) -> Image.Image:
    values = np.random.default_rng(7).integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba = Image.fromarray(values, "RGBA")
    # A palette without a transparent entry; the mask tests composite alpha only where a mode has it.
    return (rgba.convert("RGB") if mode == "P" else rgba).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "1", "P", "I", "I;16", "F", "CMYK"])
@pytest.mark.parametrize(("width", "height"), [(13, 11), (1, 9), (40, 1)])
def test_pixel_array_is_what_asarray_gives(
    monkeypatch: pytest.MonkeyPatch, mode: str, width: int, height: int
) -> None:
    # A few pixels a strip, so an image is many strips and the last is a short one.
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 30)
    image = _image(mode, width, height)
    expected = np.asarray(image)
    pixels = pixel_array(image)
    assert pixels.dtype == expected.dtype
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected)
    assert pixels.flags.writeable


def test_a_decoded_photo_reads_as_it_did() -> None:
    buffer = io.BytesIO()
    _image("RGB", 700, 301).save(buffer, format="PNG")
    image = decode_image(buffer.getvalue())
    assert np.array_equal(pixel_array(image), np.asarray(image, dtype=np.uint8))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "1", "LA", "RGBA", "I;16"])
def test_a_mask_marks_the_pixels_at_or_above_half_brightness(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 30)
    png = _png(_image(mode, 17, 9))
    image = Image.open(io.BytesIO(png))
    if mode == "I;16":
        # 8-bit values in a 16-bit file are read as those values.
        brightness = np.asarray(image).astype(np.int64)
    elif mode in ("LA", "RGBA"):
        # Transparent pixels count as background: alpha composited over black.
        la = np.asarray(image.convert("LA")).astype(np.int64)
        brightness = (la[..., 0] * la[..., 1] + 127) // 255
    else:
        brightness = np.asarray(image.convert("L")).astype(np.int64)
    mask = decode_mask(png)
    assert mask.dtype == np.uint8
    assert np.array_equal(mask, np.where(brightness >= 128, 255, 0))
    assert mask.any() and not mask.all()
