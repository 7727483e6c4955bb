"""Hardened decoding: every refusal has its reason code; odd but valid images are converted."""

from __future__ import annotations

import io
import re
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from shared.errors import ImageRejected
from shared.images import decode_image, decode_mask, encode_png

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB but whose pixel data is one tiny row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rejected(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)
    return info.value.reason


# --- valid images ------------------------------------------------------------------------


def test_png_round_trip_is_exact() -> None:
    pixels = noise(40, 60)
    image = decode_image(save(Image.fromarray(pixels), "PNG"))
    assert (image.mode, image.size) == ("RGB", (60, 40))
    assert np.array_equal(np.asarray(image), pixels)


def test_jpeg() -> None:
    image = decode_image(save(Image.new("RGB", (64, 48), (200, 100, 50)), "JPEG", quality=95))
    assert (image.mode, image.size) == ("RGB", (64, 48))
    assert np.abs(np.asarray(image, dtype=int) - (200, 100, 50)).max() <= 3


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP"])
def test_other_allowed_formats(fmt: str) -> None:
    pixels = noise(16, 24)
    params = {"lossless": True} if fmt == "WEBP" else {}
    image = decode_image(save(Image.fromarray(pixels), fmt, **params))
    assert (image.mode, image.size) == ("RGB", (24, 16))
    assert np.array_equal(np.asarray(image), pixels)


def test_16bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 1000, 32768, 65535, 65280]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    image = decode_image(save(source, "PNG"))
    assert (image.mode, image.size) == ("RGB", (6, 1))
    out = np.asarray(image)
    assert np.array_equal(out[..., 0], out[..., 2])
    # value * 255 / 65535, rounded: clipping would have made everything from 257 on 255.
    assert out[0, :, 0].tolist() == [0, 1, 4, 128, 255, 254]


def test_16bit_mask_is_scaled_then_thresholded() -> None:
    values = np.array([[0, 30000, 33000, 65535]], dtype=np.uint16)
    mask = decode_mask(save(Image.fromarray(values), "PNG"))
    assert mask.tolist() == [[0, 0, 255, 255]]


@pytest.mark.parametrize(("fmt", "dtype"), [("PNG", np.uint16), ("TIFF", np.uint16), ("TIFF", np.int32)])
def test_a_high_bit_depth_mask_holding_8_bit_values_is_read_as_8_bit(fmt: str, dtype: type[Any]) -> None:
    # OpenCV and numpy write an 8-bit 0/255 mask saved as uint16 (or int32) this way; rescaled from
    # 0..65535, its 255 was 1, and the whole mask read as background ("no product" in the console).
    values: np.ndarray = np.array([[0, 127, 128, 255]], dtype=dtype)
    assert decode_mask(save(Image.fromarray(values), fmt)).tolist() == [[0, 0, 255, 255]]


def test_32bit_int_and_float_grayscale() -> None:
    ints = Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.int32))
    assert ints.mode == "I"
    assert np.asarray(decode_image(save(ints, "TIFF")))[0, :, 0].tolist() == [0, 255, 128]
    floats = Image.fromarray(np.array([[0.0, 1.0, 0.5]], dtype=np.float32))
    assert floats.mode == "F"
    assert np.asarray(decode_image(save(floats, "TIFF")))[0, :, 0].tolist() == [0, 255, 128]


def test_a_32bit_int_grey_photo_holding_8_bit_values_is_read_as_8_bit() -> None:
    # numpy's int32 (an 8-bit photo saved by a script) holds 0..255: read over 0..65535 it was stored
    # as 0 and 1, a black photo ingested without a word.
    values = np.array([[0, 1, 128, 200, 255]], dtype=np.int32)
    photo = decode_image(save(Image.fromarray(values), "TIFF"))
    assert np.asarray(photo)[0, :, 0].tolist() == [0, 1, 128, 200, 255]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16bit_grey_photo_holding_8_bit_values_is_read_as_8_bit(fmt: str) -> None:
    # numpy's uint16 (an 8-bit photo saved by a script, as a mask is) holds 0..255: read over 0..65535
    # it was stored as 0 and 1, a black photo ingested without a word.
    values = np.array([[0, 1, 128, 200, 255]], dtype=np.uint16)
    photo = decode_image(save(Image.fromarray(values), fmt))
    assert np.asarray(photo)[0, :, 0].tolist() == [0, 1, 128, 200, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    data = save(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode_image(data)
    assert (image.mode, image.size) == ("RGB", (32, 32))
    r, g, b = np.asarray(image, dtype=int).reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 15 and b < 15


def test_palette_png_with_transparency_goes_over_white() -> None:
    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    palette.putdata([0, 0, 1, 1, 0, 0, 1, 1])
    data = save(palette, "PNG", transparency=1)  # index 1 (blue) is fully transparent
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = np.asarray(decode_image(data))
    assert out.shape == (2, 4, 3)
    assert out[0, 0].tolist() == list(RED)
    assert out[0, 2].tolist() == list(WHITE)


def test_palette_png_without_transparency() -> None:
    palette = Image.new("RGB", (8, 8), BLUE).convert("P")
    out = np.asarray(decode_image(save(palette, "PNG")))
    assert out.reshape(-1, 3).tolist() == [list(BLUE)] * 64


def test_grayscale_and_bilevel() -> None:
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    image = decode_image(save(Image.fromarray(gray), "PNG"))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.repeat(gray[..., None], 3, axis=2))

    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    assert np.asarray(decode_image(save(bilevel, "PNG"))).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_rgba_and_la_composite_over_white() -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 128)  # half red
    rgba[0, 2] = (0, 0, 0, 0)  # transparent black
    out = np.asarray(decode_image(save(Image.fromarray(rgba), "PNG")))
    assert out[0].tolist() == [[255, 0, 0], [255, 127, 127], [255, 255, 255]]

    la = Image.fromarray(np.array([[[0, 255], [0, 0]]], dtype=np.uint8), mode="LA")
    assert np.asarray(decode_image(save(la, "PNG")))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90 degrees clockwise to display
    data = save(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(data)
    assert (image.mode, image.size) == ("RGB", (20, 40))
    out = np.asarray(image, dtype=int)
    assert np.abs(out[5, 10] - RED).max() < 10  # left edge turns into the top
    assert np.abs(out[35, 10] - BLUE).max() < 10


def test_animated_image_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = save(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert np.asarray(decode_image(data)).reshape(-1, 3).tolist() == [list(RED)] * 64

    gif = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(decode_image(gif, allowed_formats=("GIF",)))
    assert out.reshape(-1, 3).tolist() == [list(RED)] * 64


# --- refusals ------------------------------------------------------------------------------


def test_empty() -> None:
    assert rejected(b"") == "empty"


def test_too_large_bytes() -> None:
    data = save(Image.fromarray(noise(32, 32)), "PNG")
    assert rejected(data, max_bytes=len(data) - 1) == "too_large_bytes"
    assert decode_image(data, max_bytes=len(data)).size == (32, 32)


def test_random_bytes_are_not_an_image() -> None:
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert rejected(data) == "not_an_image"
    assert rejected(b"just some text, not an image") == "not_an_image"


def test_corrupt_png_pixel_data() -> None:
    data = bytearray(save(Image.fromarray(noise(100, 100)), "PNG"))
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the chunk CRC no longer matches
    assert rejected(bytes(data)) == "corrupt"


def test_truncated_png_and_jpeg() -> None:
    png = save(Image.fromarray(noise(100, 100)), "PNG")
    assert rejected(png[: len(png) // 2]) == "truncated"
    jpeg = save(Image.fromarray(noise(100, 100)), "JPEG")
    assert rejected(jpeg[: len(jpeg) // 2]) == "truncated"


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"compression": "tiff_adobe_deflate"}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_truncated_tiff_and_webp(fmt: str, params: dict[str, Any]) -> None:
    # A compressed TIFF keeps its directory (IFD) after the pixels and a WebP declares its length up
    # front: cut short, Pillow could not identify the one (not_an_image) nor open the other (corrupt).
    data = save(Image.fromarray(noise(100, 100)), fmt, **params)
    for kept in (len(data) // 2, len(data) - 1):
        assert rejected(data[:kept]) == "truncated"
    assert decode_image(data).size == (100, 100)
    # Bytes that only start like one (no WebP RIFF header, no TIFF directory) are no image.
    assert rejected(data[:4] + bytes(64)) == "not_an_image"


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_short_then_closed_is_truncated(progressive: bool) -> None:
    # A JPEG cut mid-scan whose end marker (EOI) was written after the cut: libjpeg only warns and
    # fills the missing blocks (flat grey in a baseline file), and Pillow loaded it without an error.
    jpeg = save(Image.fromarray(noise(200, 200)), "JPEG", progressive=progressive)
    assert rejected(jpeg[: len(jpeg) // 2] + b"\xff\xd9") == "truncated"
    # A whole JPEG, restart markers in its scan or bytes after its end, still decodes.
    assert decode_image(jpeg).size == (200, 200)
    assert decode_image(jpeg + b"trailing").size == (200, 200)
    restarts = save(Image.fromarray(noise(200, 200)), "JPEG", restart_marker_blocks=4)
    assert decode_image(restarts).size == (200, 200)
    assert rejected(restarts[: len(restarts) // 2] + b"\xff\xd9") == "truncated"
    for mode in ("L", "CMYK"):
        other = save(Image.fromarray(noise(200, 200)).convert(mode), "JPEG", progressive=progressive)
        assert decode_image(other).size == (200, 200)
        assert rejected(other[: len(other) // 2] + b"\xff\xd9") == "truncated"


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("restarts", [{"restart_marker_blocks": 4}, {"restart_marker_rows": 1}])
def test_jpeg_cut_on_a_restart_marker_is_truncated(progressive: bool, restarts: dict[str, int]) -> None:
    # Cut just before a restart marker (RSTn) and closed: libjpeg resyncs past anything put before the
    # end marker, so a second decode with filler there saw no difference and the cut file decoded.
    jpeg = save(Image.fromarray(noise(200, 200)), "JPEG", progressive=progressive, **restarts)
    assert decode_image(jpeg).size == (200, 200)
    markers = [found.start() for found in re.finditer(rb"\xff[\xd0-\xd7]", jpeg)]
    for cut in (markers[len(markers) // 2], markers[-1]):
        assert rejected(jpeg[:cut] + b"\xff\xd9") == "truncated"


def test_progressive_jpeg_cut_between_scans_is_truncated() -> None:
    # Cut where a scan starts and closed: libjpeg shows the coarser picture the earlier scans made,
    # without a warning. Before the sixth of libjpeg's ten scans some coefficient is unsent, or short of
    # more than its last bit.
    jpeg = save(Image.fromarray(noise(200, 200)), "JPEG", progressive=True)
    scans = [found.start() for found in re.finditer(rb"\xff\xda", jpeg)]
    assert len(scans) == 10
    for cut in scans[1:6]:
        assert rejected(jpeg[:cut] + b"\xff\xd9") == "truncated"


def test_progressive_jpeg_without_its_last_bit_refinements_decodes() -> None:
    # The last four of libjpeg's ten scans only refine every coefficient's last bit, and an encoder may
    # leave them out (a scan script is the encoder's to choose): the picture is whole, each coefficient
    # at most one step off, as at a lower quality. Such a file, ended by its end marker, was refused as
    # truncated; one that also lacks the end marker has two signs of a cut, and still is.
    y, x = np.mgrid[0:200, 0:200]
    waves = (128 + 60 * np.sin(x / 7) + 50 * np.cos(y / 11 + x / 13)).clip(0, 255).astype(np.uint8)
    jpeg = save(Image.fromarray(np.stack([waves, waves[::-1], 255 - waves], -1)), "JPEG", progressive=True)
    whole = np.asarray(decode_image(jpeg), dtype=np.int16)
    tables = [found.start() for found in re.finditer(rb"\xff\xc4", jpeg)]
    last = jpeg[: tables[-1]]  # without the last scan and the Huffman table it brings along
    decoded = np.asarray(decode_image(last + b"\xff\xd9"), dtype=np.int16)
    assert decoded.shape == whole.shape and np.abs(decoded - whole).mean() < 2
    assert rejected(last) == "truncated"


@pytest.mark.parametrize(
    "params",
    [{}, {"subsampling": 0}, {"progressive": True}, {"restart_marker_rows": 1}, {"optimize": True}],
)
def test_whole_jpeg_without_its_end_marker_decodes(params: dict[str, Any]) -> None:
    # Some cameras and uploaders leave off the end marker (EOI) of a file whose every scan is whole:
    # Pillow stopped waiting for it and the photo was refused as truncated.
    jpeg = save(Image.fromarray(noise(120, 200)), "JPEG", **params)
    assert jpeg.endswith(b"\xff\xd9")
    assert decode_image(jpeg[:-2]).tobytes() == decode_image(jpeg).tobytes()
    # Cut anywhere in its pixels without the marker, it is still truncated: in the last block too.
    for kept in (len(jpeg) // 2, len(jpeg) - 4, len(jpeg) - 12):
        assert rejected(jpeg[:kept]) == "truncated"


def test_too_many_pixels_real_image() -> None:
    data = save(Image.fromarray(noise(100, 101)), "PNG")
    assert rejected(data, max_pixels=100 * 100) == "too_many_pixels"
    assert decode_image(data, max_pixels=100 * 101).size == (101, 100)
    with pytest.raises(ImageRejected) as info:
        decode_mask(data, max_pixels=100 * 100)
    assert info.value.reason == "too_many_pixels"


def test_too_many_pixels_is_checked_before_decoding() -> None:
    # Only the header is big: decoding would fail as truncated, so the reason proves the order.
    assert rejected(png_with_header(7_000, 7_000)) == "too_many_pixels"
    # Far past Pillow's own bomb limit: Pillow raises at open, still reported as ours.
    assert rejected(png_with_header(30_000, 30_000), max_pixels=10**10) == "too_many_pixels"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_threshold_is_a_refusal() -> None:
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None
    side = int(limit**0.5) + 10  # past the warning threshold, below Pillow's hard error
    assert rejected(png_with_header(side, side), max_pixels=10**10) == "too_many_pixels"


def test_zero_size_header() -> None:
    assert rejected(png_with_header(0, 10)) == "zero_size"
    assert rejected(png_with_header(10, 0)) == "zero_size"


@pytest.mark.parametrize("fmt", ["GIF", "PPM", "ICO", "TGA"])
def test_format_not_allowed(fmt: str) -> None:
    data = save(Image.new("RGB", (16, 16), RED), fmt)
    assert rejected(data) == "format_not_allowed"
    assert decode_image(data, allowed_formats=(fmt,)).size == (16, 16)


def test_allowed_formats_can_be_narrowed() -> None:
    assert rejected(save(Image.new("RGB", (4, 4)), "JPEG"), allowed_formats=("PNG",)) == "format_not_allowed"


# --- masks ---------------------------------------------------------------------------------


def test_mask_threshold_at_128() -> None:
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    mask = decode_mask(save(Image.fromarray(values), "PNG"))
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[0, 0, 255, 255]]


def label_image(mode: str) -> Image.Image:
    """A 0/1 label mask (1 on the product in the middle column), as segmentation datasets store them."""
    labels = np.array([[0, 1, 0], [0, 1, 0]], dtype=np.uint16 if mode == "I;16" else np.uint8)
    image = Image.fromarray(labels)
    if mode == "P":
        image = Image.fromarray(labels, "P")
        image.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # PASCAL VOC: class 1 is dark red
    assert image.mode == mode
    return image


@pytest.mark.parametrize("mode", ["L", "I;16", "P"])
def test_a_0_1_label_mask_marks_its_label_1_pixels(mode: str) -> None:
    # By brightness every pixel is below 128: the mask marked nothing, and training took it as empty.
    assert decode_mask(save(label_image(mode), "PNG")).tolist() == [[0, 255, 0], [0, 255, 0]]


def test_a_dark_mask_that_is_not_0_1_labels_still_marks_nothing() -> None:
    for values in ([[0, 2, 0]], [[1, 1, 1]], [[0, 100, 1]]):
        assert not decode_mask(save(Image.fromarray(np.array(values, dtype=np.uint8)), "PNG")).any()


def test_mask_from_rgb_bilevel_and_rgba() -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0] = 255
    assert decode_mask(save(Image.fromarray(rgb), "PNG")).tolist() == [[255, 255], [0, 0]]

    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    assert decode_mask(save(bilevel, "PNG")).tolist() == [[0, 255]]

    rgba = np.full((1, 3, 4), 255, dtype=np.uint8)
    rgba[0, :, 3] = (255, 100, 0)  # white, mostly transparent, fully transparent
    assert decode_mask(save(Image.fromarray(rgba), "PNG")).tolist() == [[255, 0, 0]]


def test_a_lab_mask_is_read_by_its_lightness() -> None:
    """A mask saved as a CIELab TIFF (Photoshop's Lab mode) was ``unsupported_mode``; its L channel is
    the white-on-black a person drew, as the same mask in greyscale is read."""
    lab = np.zeros((4, 6, 3), dtype=np.uint8)
    lab[1:3, 2:5, 0] = 255  # L* 100 (white) on L* 0 (black); a* and b* neutral
    mask = decode_mask(save(Image.fromarray(lab, "LAB"), "TIFF"))
    expected = np.zeros((4, 6), dtype=np.uint8)
    expected[1:3, 2:5] = 255
    assert mask.tolist() == expected.tolist()


def test_mask_refusals() -> None:
    for data, reason in [(b"", "empty"), (b"not a png", "not_an_image")]:
        with pytest.raises(ImageRejected) as info:
            decode_mask(data)
        assert info.value.reason == reason
    with pytest.raises(ImageRejected) as jpeg_info:
        decode_mask(save(Image.new("L", (4, 4)), "JPEG"))
    assert jpeg_info.value.reason == "format_not_allowed"


# --- encoding ------------------------------------------------------------------------------


def test_encode_png_is_deterministic_and_metadata_free() -> None:
    pixels = noise(20, 30)
    plain = Image.fromarray(pixels)
    decorated = Image.fromarray(pixels)
    decorated.info["dpi"] = (300, 300)
    decorated.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "something")
    reloaded = Image.open(io.BytesIO(save(decorated, "PNG", pnginfo=text, exif=b"Exif\x00\x00")))
    reloaded.load()
    encoded = {encode_png(pixels), encode_png(plain), encode_png(decorated), encode_png(reloaded)}
    assert len(encoded) == 1
    data = encoded.pop()
    assert b"iCCP" not in data and b"tEXt" not in data and b"eXIf" not in data
    assert np.array_equal(np.asarray(decode_image(data)), pixels)


def test_encode_png_arrays() -> None:
    mask = np.array([[True, False]])
    assert decode_mask(encode_png(mask)).tolist() == [[255, 0]]
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    assert Image.open(io.BytesIO(encode_png(rgba))).mode == "RGBA"
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_png(Image.new("CMYK", (2, 2)))


def test_encode_png_keeps_palette_transparency() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    palette.putdata([0, 1])
    palette.info["transparency"] = 1
    assert np.asarray(decode_image(encode_png(palette)))[0].tolist() == [list(RED), list(WHITE)]
