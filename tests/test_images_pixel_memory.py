"""Pixels read and converted a strip at a time: pixel_array, and decoding's alpha blends, colour keys,
label masks and 16- and 32-bit rescaling, give the values the whole-image arithmetic gave, and a big
image costs little more than its result (tracemalloc, measured with small strips)."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

import shared.images
from shared.images import decode_image, decode_mask, photo_and_transparency, pixel_array
from tests.support.memory import peak_traced_bytes


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


def _rgb_over_white(image: Image.Image) -> npt.NDArray[np.int64]:
    """What decode_image made of an image with alpha: RGB composited over white, rounded to nearest."""
    rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
    colour, alpha = rgba[..., :3], rgba[..., 3:]
    return (colour * alpha + 255 * (255 - alpha) + 127) // 255


def _image_with_alpha(mode: str) -> Image.Image:
    """A small noisy image in `mode` with some transparent pixels; for "P", a palette with a
    transparent entry."""
    source = _image("RGBA", 17, 9)
    if mode != "P":
        return source.convert(mode)
    image = source.convert("RGB").convert("P")
    image.info["transparency"] = int(np.asarray(image)[4, 5])
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P"])
def test_a_photo_with_alpha_is_composited_over_white_strip_by_strip(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 30)
    image = _image_with_alpha(mode)
    photo = decode_image(_png(image)) if mode != "PA" else shared.images.to_rgb(image)
    assert photo.mode == "RGB"
    assert np.array_equal(np.asarray(photo), _rgb_over_white(image))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P"])
def test_the_transparency_mask_is_the_opaque_pixels(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 30)
    image = _image_with_alpha(mode)
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    mask = shared.images.transparency_mask(image)
    assert mask is not None
    assert np.array_equal(mask, np.where(alpha >= 128, 255, 0))


# --- memory: a 40 MP image must not cost several copies of itself -------------------------------
# Measured on a smaller image with small strips, so a strip is a sliver of the image as it is at 40 MP.
_SIDE = 1200


def _cut_out(mode: str) -> bytes:
    """A product cut-out: noise inside an opaque square, transparent around it."""
    values = np.random.default_rng(3).integers(0, 256, (_SIDE, _SIDE, 4), dtype=np.uint8)
    values[..., 3] = 0
    values[_SIDE // 4 : 3 * _SIDE // 4, _SIDE // 4 : 3 * _SIDE // 4, 3] = 255
    return _png(Image.fromarray(values, "RGBA").convert(mode))


@pytest.fixture(params=["RGBA", "LA"])
def big_cut_out(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A big cut-out PNG with alpha (RGBA, then LA), decoded in strips a sliver of it."""
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 2**14)
    return _cut_out(request.param)


def test_decoding_a_big_cut_out_holds_little_more_than_its_rgb(big_cut_out: bytes) -> None:
    # Compositing went through np.asarray of the whole RGBA image as uint16 and four image-sized
    # temporaries: 22 bytes a pixel traced (880 MiB at 40 MP) for a 3-byte-a-pixel result.
    rgb_bytes = _SIDE * _SIDE * 3
    assert peak_traced_bytes(lambda: decode_image(big_cut_out)) < 1.5 * rgb_bytes
    assert peak_traced_bytes(lambda: photo_and_transparency(big_cut_out)) < 1.5 * rgb_bytes


def test_a_big_mask_with_alpha_holds_little_more_than_the_mask(big_cut_out: bytes) -> None:
    # The LA array as uint16 and the blend's temporaries: 8 bytes a pixel for a 1-byte-a-pixel mask.
    assert peak_traced_bytes(lambda: decode_mask(big_cut_out)) < 1.5 * _SIDE * _SIDE


def _keyed_rgb(side: int) -> bytes:
    """An RGB PNG cut-out made transparent by a colour key (tRNS), as optimisers write them."""
    values = np.random.default_rng(4).integers(0, 256, (side, side, 3), dtype=np.uint8)
    values[: side // 3] = (1, 2, 3)
    buffer = io.BytesIO()
    Image.fromarray(values, "RGB").save(buffer, format="PNG", transparency=(1, 2, 3), compress_level=1)
    return buffer.getvalue()


def _grey16(side: int) -> bytes:
    values = np.random.default_rng(6).integers(0, 65536, (side, side)).astype(np.uint16)
    return _png(Image.fromarray(values))


def test_decoding_a_big_colour_keyed_cut_out_holds_little_more_than_its_rgb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The whole image through np.asarray, a uint16 alpha and a uint16 copy of the RGB to blend:
    # 22 bytes a pixel traced for a 3-byte-a-pixel result, 8 for a 1-byte mask. Now the result, the
    # 1-byte alpha and (for a mask) the brightness blended.
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 2**14)
    data = _keyed_rgb(_SIDE)
    rgb_bytes = _SIDE * _SIDE * 3
    assert peak_traced_bytes(lambda: decode_image(data)) < 2 * rgb_bytes
    assert peak_traced_bytes(lambda: decode_mask(data)) < 4 * _SIDE * _SIDE


def test_decoding_a_big_16_bit_grey_image_holds_little_more_than_its_8_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The 16-bit pixels twice (np.asarray), then as uint32 to rescale: 7 bytes a pixel for a photo
    # (whose array is 1 byte a pixel before it becomes RGB) and 9 for a mask.
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 2**14)
    data = _grey16(_SIDE)
    assert peak_traced_bytes(lambda: decode_image(data)) < 2 * _SIDE * _SIDE
    assert peak_traced_bytes(lambda: decode_mask(data)) < 2 * _SIDE * _SIDE


@pytest.mark.parametrize("values", ["8-bit", "16-bit"])
def test_a_16_bit_grey_image_reads_the_same_strip_by_strip(
    monkeypatch: pytest.MonkeyPatch, values: str
) -> None:
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 30)
    grey = (
        np.random.default_rng(8).integers(0, 256 if values == "8-bit" else 65536, (9, 17)).astype(np.uint16)
    )
    data = _png(Image.fromarray(grey))
    scaled = ((grey.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    # 8-bit values saved as uint16 are read as they are, by photo and mask alike.
    brightness = grey if values == "8-bit" else scaled
    assert np.array_equal(np.asarray(decode_image(data))[..., 0], brightness)
    assert np.array_equal(decode_mask(data), np.where(brightness >= 128, 255, 0))


def test_a_colour_keyed_image_reads_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 30)
    data = _keyed_rgb(17)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int64)
    hidden = (rgb == (1, 2, 3)).all(axis=-1)
    assert np.array_equal(np.asarray(decode_image(data)), np.where(hidden[..., None], 255, rgb))
    grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert np.array_equal(decode_mask(data), np.where(~hidden & (grey >= 128), 255, 0))
    transparency = photo_and_transparency(data)[2]
    assert transparency is not None
    assert np.array_equal(transparency, np.where(hidden, 0, 255))


def _scaled(values: npt.NDArray[np.float64], low: float, high: float) -> npt.NDArray[np.uint8]:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


_WIDE_GREYS = {
    "I within 16 bits": ("I", np.arange(9 * 17).reshape(9, 17) * 400.0, (0.0, 65535.0)),
    "I stretched": ("I", np.arange(9 * 17).reshape(9, 17) * 1000.0 - 5000.0, (-5000.0, 147000.0)),
    "I flat": ("I", np.full((9, 17), 70000.0), (70000.0, 70000.0)),
    "F within 0..1": ("F", np.linspace(0.0, 1.0, 9 * 17).reshape(9, 17), (0.0, 1.0)),
    "F within 0..255": ("F", np.linspace(0.0, 200.0, 9 * 17).reshape(9, 17), (0.0, 255.0)),
    "F stretched": ("F", np.linspace(-3.0, 700.0, 9 * 17).reshape(9, 17), None),
}


@pytest.mark.parametrize("case", sorted(_WIDE_GREYS))
def test_32_bit_grey_reads_as_before(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 30)
    mode, values, scale = _WIDE_GREYS[case]
    if mode == "F":
        values = values.astype(np.float32)
        values[2, 3], values[5, 6], values[7, 1] = np.nan, np.inf, -np.inf  # read as 0
        image = Image.fromarray(values)
    else:
        image = Image.fromarray(values.astype(np.int32))
    assert image.mode == mode
    floats = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = scale if scale is not None else (float(floats.min()), float(floats.max()))
    expected = _scaled(floats, low, high)
    assert np.array_equal(np.asarray(shared.images.to_rgb(image))[..., 0], expected)


def test_a_big_32_bit_float_image_holds_little_more_than_its_8_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    # np.asarray of the whole float image (twice), then three float64 copies to clean and scale it:
    # 30 bytes a pixel traced for what becomes a 1-byte grey.
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 2**14)
    values = np.random.default_rng(2).random((_SIDE, _SIDE)).astype(np.float32) * np.float32(300.0)
    image = Image.fromarray(values)
    assert peak_traced_bytes(lambda: shared.images.to_rgb(image)) < 2 * _SIDE * _SIDE
