"""Image decoding review: a PNG colour key (tRNS) is in the file's bit depth, not the decoded pixels';
a BMP's fourth byte all 0 is no alpha."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from shared.errors import ImageRejected
from shared.images import decode_image, decode_mask, photo_and_transparency


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(
    width: int,
    height: int,
    bit_depth: int,
    colour_type: int,
    rows: bytes,
    trns: bytes | None,
    extra: bytes = b"",
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + (b"" if trns is None else _chunk(b"tRNS", trns))
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def _rgb16_rows(samples: npt.NDArray[np.uint16]) -> bytes:
    """PNG scanlines for HxWx3 16-bit samples, each row Sub-filtered (so unfiltering matters)."""
    rows = b""
    for row in samples:
        raw = np.frombuffer(row.astype(">u2").tobytes(), dtype=np.uint8).astype(np.int32)
        left = np.concatenate([np.zeros(6, np.int32), raw[:-6]])  # 6 bytes a pixel
        rows += b"\x01" + ((raw - left) % 256).astype(np.uint8).tobytes()
    return rows


def test_low_bit_depth_grayscale_key_is_scaled_like_the_pixels() -> None:
    # 2-bit samples 3 (white, the key) and 1 (dark grey): Pillow shows them as 255 and 85, and the
    # key 3 used to be compared with those 8-bit values, so the white background stayed product.
    two_bit = _png(2, 1, 2, 0, b"\x00" + bytes([0b11_01_0000]), trns=struct.pack(">H", 3))
    assert decode_mask(two_bit).tolist() == [[0, 0]]
    assert np.asarray(decode_image(two_bit)).tolist() == [[[255, 255, 255], [85, 85, 85]]]

    # 4-bit: sample 5 is the key, sample 15 (white) is product.
    four_bit = _png(2, 1, 4, 0, b"\x00" + bytes([0x5F]), trns=struct.pack(">H", 5))
    assert np.asarray(decode_image(four_bit)).tolist() == [[[255, 255, 255], [255, 255, 255]]]
    assert decode_mask(four_bit).tolist() == [[0, 255]]
    four_bit_dark = _png(2, 1, 4, 0, b"\x00" + bytes([0x52]), trns=struct.pack(">H", 5))
    assert np.asarray(decode_image(four_bit_dark)).tolist() == [[[255, 255, 255], [34, 34, 34]]]

    # A key outside the bit depth matches nothing.
    out_of_range = _png(2, 1, 2, 0, b"\x00" + bytes([0b11_00_0000]), trns=struct.pack(">H", 7))
    assert decode_mask(out_of_range).tolist() == [[255, 0]]


def test_sixteen_bit_rgb_key_matches_the_full_sample_not_its_low_byte() -> None:
    # Key grey 0xC800. A grey 0xC8FF differs from it (same high byte) and black 0x0000 is the key
    # taken mod 256: the key used to wrap to black, hiding the black pixel and showing the key's.
    samples = np.array([[[0xC800] * 3, [0xC8FF] * 3, [0, 0, 0]]], dtype=np.uint16)
    data = _png(3, 1, 16, 2, _rgb16_rows(samples), trns=struct.pack(">HHH", 0xC800, 0xC800, 0xC800))
    assert np.asarray(decode_image(data)).tolist() == [[[255, 255, 255], [200, 200, 200], [0, 0, 0]]]
    assert decode_mask(data).tolist() == [[0, 255, 0]]

    # A key above 255 in every channel (white) no longer overflows the 8-bit pixels' dtype.
    white = np.array([[[65535] * 3, [65535, 0, 0]]], dtype=np.uint16)
    keyed_white = _png(2, 1, 16, 2, _rgb16_rows(white), trns=struct.pack(">HHH", 65535, 65535, 65535))
    assert np.asarray(decode_image(keyed_white)).tolist() == [[[255, 255, 255], [255, 0, 0]]]


def test_a_16_bit_rgb_mask_holding_8_bit_values_is_read_as_8_bit() -> None:
    # OpenCV writes a 3-channel 8-bit 0/255 mask saved as uint16 this way. Pillow keeps each sample's
    # high byte, 0 here, so the whole mask read as background (a 422 in the console, an empty
    # training mask), as the 16-bit greyscale one did (tests/test_images.py).
    samples = np.array([[[0] * 3, [127] * 3, [128] * 3, [255] * 3]], dtype=np.uint16)
    assert decode_mask(_png(4, 1, 16, 2, _rgb16_rows(samples), trns=None)).tolist() == [[0, 0, 255, 255]]
    # Keyed the same way: the key's pixel is background, the rest read as 8-bit values.
    keyed = _png(4, 1, 16, 2, _rgb16_rows(samples), trns=struct.pack(">HHH", 128, 128, 128))
    assert decode_mask(keyed).tolist() == [[0, 0, 0, 255]]
    # Values above 255 are 16-bit ones, rescaled as before: 0x7F00 is dark, 0x8100 bright.
    deep = np.array([[[0x7F00] * 3, [0x8100] * 3]], dtype=np.uint16)
    assert decode_mask(_png(2, 1, 16, 2, _rgb16_rows(deep), trns=None)).tolist() == [[0, 255]]


def test_sixteen_bit_rgb_key_on_a_rotated_photo_hides_exactly_the_key_pixels() -> None:
    rng = np.random.default_rng(7)
    samples = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    key = (int(samples[1, 2, 0]), int(samples[1, 2, 1]), int(samples[1, 2, 2]))
    samples[3, 4] = key
    # Same high bytes as the key, other low bytes: opaque.
    samples[0, 0] = [(k & 0xFF00) | ((k + 1) & 0xFF) for k in key]
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise to view
    exif_chunk = _chunk(b"eXIf", exif.tobytes()[len(b"Exif\x00\x00") :])
    data = _png(7, 5, 16, 2, _rgb16_rows(samples), trns=struct.pack(">HHH", *key), extra=exif_chunk)

    transparent = np.all(samples == np.array(key, dtype=np.uint16), axis=-1)
    assert int(transparent.sum()) == 2
    expected = np.where(transparent[..., None], 255, samples >> 8).astype(np.uint8)
    expected = np.rot90(expected, k=-1)  # orientation 6
    assert np.array_equal(np.asarray(decode_image(data)), expected)


def test_a_premultiplied_grey_alpha_tiff_decodes_with_its_transparency() -> None:
    """A grey + alpha TIFF whose ExtraSamples says associated alpha opens as Pillow's "La", which has
    no conversion to RGBA: ingest crashed with a ValueError traceback, the console answered 500."""
    import io

    from shared.images import photo_and_transparency

    grey = np.full((16, 16), 200, dtype=np.uint8)
    alpha = np.zeros((16, 16), dtype=np.uint8)
    alpha[4:12, 4:12] = 255
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    entry = data.find(struct.pack("<HHI", 338, 3, 1))  # ExtraSamples, SHORT, 1 value: 2 (unassociated)
    assert entry > 0 and data[entry + 8] == 2
    data[entry + 8] = 1  # associated (premultiplied)
    assert Image.open(io.BytesIO(bytes(data))).mode == "La"
    image = decode_image(bytes(data))
    assert image.mode == "RGB" and image.getpixel((8, 8)) == (200, 200, 200)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent: over white
    _, _, mask = photo_and_transparency(bytes(data))
    assert mask is not None and mask[8, 8] == 255 and mask[0, 0] == 0 and int(mask.sum()) == 64 * 255


def _baseline_tiff(planes: list[np.ndarray], *, planar: bool, photometric: int) -> bytes:
    """An uncompressed little-endian TIFF of 16-bit samples (one plane per sample), laid out per
    channel (planar) or interleaved; Pillow cannot write per-channel TIFFs."""
    height, width = planes[0].shape
    samples = len(planes)
    if planar:
        strips = [plane.astype("<u2").tobytes() for plane in planes]
    else:
        strips = [np.stack(planes, axis=-1).astype("<u2").tobytes()]
    entries = 10
    extra = 8 + 2 + 12 * entries + 4  # after the header and the IFD
    bps_at = extra
    offsets_at = bps_at + 2 * samples
    counts_at = offsets_at + 4 * len(strips)
    data_at = counts_at + 4 * len(strips)
    offsets, at = [], data_at
    for strip in strips:
        offsets.append(at)
        at += len(strip)

    def short(tag: int, value: int) -> bytes:
        return struct.pack("<HHIHH", tag, 3, 1, value, 0)

    def longs(tag: int, values: list[int], where: int) -> bytes:
        # One value fits in the entry itself; more are stored at ``where``.
        return struct.pack("<HHII", tag, 4, len(values), values[0] if len(values) == 1 else where)

    ifd = b"".join(
        [
            short(256, width),
            short(257, height),
            short(258, 16) if samples == 1 else struct.pack("<HHII", 258, 3, samples, bps_at),
            short(259, 1),
            short(262, photometric),
            longs(273, offsets, offsets_at),
            short(277, samples),
            short(278, height),
            longs(279, [len(strip) for strip in strips], counts_at),
            short(284, 2 if planar else 1),
        ]
    )
    return b"".join(
        [
            b"II" + struct.pack("<HI", 42, 8),
            struct.pack("<H", entries) + ifd + struct.pack("<I", 0),
            struct.pack(f"<{samples}H", *([16] * samples)),
            struct.pack(f"<{len(strips)}I", *offsets),
            struct.pack(f"<{len(strips)}I", *(len(strip) for strip in strips)),
            *strips,
        ]
    )


def test_a_16_bit_tiff_pillow_would_misread_is_refused_and_its_readable_twin_is_not() -> None:
    # Stored per channel and uncompressed, Pillow read the 16-bit planes as 8-bit ones: ingest stored
    # a zoomed, recoloured quarter of the photo as the product's reference photo, exit 0.
    rng = np.random.default_rng(4)
    planes = [rng.integers(0, 65536, (32, 48), dtype=np.uint16) for _ in range(3)]
    with pytest.raises(ImageRejected, match="stored per channel") as refused:
        decode_image(_baseline_tiff(planes, planar=True, photometric=2))
    assert refused.value.reason == "unsupported_mode"
    interleaved = np.asarray(decode_image(_baseline_tiff(planes, planar=False, photometric=2)))
    expected = np.stack([(plane / 257).round() for plane in planes], axis=-1)
    assert np.abs(interleaved.astype(int) - expected).max() <= 1
    with pytest.raises(ImageRejected, match="MinIsWhite"):
        decode_image(_baseline_tiff(planes[:1], planar=False, photometric=0))


def _bmp_v5_bgra(pixels: npt.NDArray[np.uint8]) -> bytes:
    """A 32-bit BMP (BITMAPV5HEADER, BI_BITFIELDS) whose masks give the fourth byte as alpha: what
    Windows' clipboard and some editors write, often with every alpha byte 0. ``pixels`` is HxWx4 RGBA."""
    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels[::-1][..., [2, 1, 0, 3]]).tobytes()  # bottom-up BGRA
    header = struct.pack("<IiiHHIIiiII", 124, width, height, 1, 32, 3, len(rows), 2835, 2835, 0, 0)
    header += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    header += b"BGRs" + b"\0" * 48 + struct.pack("<I", 4) + b"\0" * 12
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + header + rows


def test_a_bmp_whose_alpha_bytes_are_all_zero_is_read_opaque_as_browsers_read_it() -> None:
    # Before, such a BMP (alpha 0 meaning "unused", as Windows treats it) decoded as a plain white
    # picture, and ingest refused it as blank_photo ("every pixel is transparent"); Chrome, Firefox
    # and Windows show the photo.
    pixels = np.zeros((32, 48, 4), np.uint8)
    pixels[..., :3] = (200, 30, 40)
    pixels[8:24, 12:36, :3] = (20, 160, 60)
    data = _bmp_v5_bgra(pixels)
    assert Image.open(io.BytesIO(data)).mode == "RGBA"  # Pillow reads the fourth byte as alpha
    assert np.array_equal(np.asarray(decode_image(data)), pixels[..., :3])
    image, _, transparency = photo_and_transparency(data, refuse_empty=True)
    assert np.array_equal(np.asarray(image), pixels[..., :3]) and transparency is None
    drawn = np.zeros((32, 48, 4), np.uint8)
    drawn[8:24, 12:36, :3] = 255  # a white-on-black mask saved so
    expected = np.where(drawn[..., 0] == 255, np.uint8(255), np.uint8(0))
    assert np.array_equal(decode_mask(_bmp_v5_bgra(drawn)), expected)  # was all background

    # One that uses its alpha keeps it: the transparent pixels go over white.
    pixels[..., 3] = 255
    pixels[:8, :, 3] = 0
    cutout = decode_image(_bmp_v5_bgra(pixels))
    assert (np.asarray(cutout)[:8] == 255).all()
    assert np.array_equal(np.asarray(cutout)[8:], pixels[8:, :, :3])
