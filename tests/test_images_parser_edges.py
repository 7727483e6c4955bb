"""Image decoding edges: a JPEG whose height comes after its first scan (DNL) is refused for what it
is, not as bytes in no known format; a baseline JPEG with zeros for its scan's spectral range, with
stray bytes between its marker segments, or arithmetic-coded, is read, as libjpeg reads it."""

from __future__ import annotations

import base64
import io
import struct

import pytest
from PIL import Image, ImageChops

from shared.errors import ImageRejected
from shared.images import decode_image, decode_mask


def _jpeg() -> bytes:
    """A 64x48 baseline JPEG as Pillow writes it: one interleaved scan, then its end marker."""
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((64, 48)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _dnl_jpeg() -> bytes:
    """A baseline JPEG whose frame header (SOF0) says height 0 and whose one scan is followed by a
    DNL marker with the real height, as some scanners and fax-like encoders write it."""
    data = bytearray(_jpeg())
    position = 2
    while data[position + 1] != 0xC0:  # walk the marker segments to the frame header
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + length
    height_at = position + 5  # marker, length, precision, then height
    height = data[height_at : height_at + 2]
    data[height_at : height_at + 2] = b"\x00\x00"
    assert data.endswith(b"\xff\xd9")  # one scan, then EOI: the DNL goes between them
    return bytes(data[:-2]) + b"\xff\xdc\x00\x04" + height + b"\xff\xd9"


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut and closed"])
def test_a_jpeg_with_its_height_in_a_dnl_marker_is_refused_naming_it(cut: bool) -> None:
    # Neither Pillow nor libjpeg reads a DNL height: Pillow took the file for no image at all and it
    # was refused as 'not_an_image', which sends the user looking for a wrong extension.
    data = _dnl_jpeg()
    if cut:
        data = data[:-40] + b"\xff\xd9"
    with pytest.raises(ImageRejected) as refused:
        decode_image(data)
    assert refused.value.reason == "zero_size"
    assert "DNL" in refused.value.detail and "64x0" in refused.value.detail, refused.value.detail
    assert "save the photo again" in refused.value.detail, refused.value.detail
    # Read as a mask, the advice names a mask, and PNG: it said "save the photo again" of a mask too,
    # then "save the mask again with an image editor", which may save it as a JPEG again (no mask).
    with pytest.raises(ImageRejected) as refused:
        decode_mask(data)
    assert refused.value.reason == "zero_size", refused.value
    assert "save the mask again as PNG" in refused.value.detail, refused.value.detail


def test_a_jpeg_declaring_zero_width_is_refused_as_zero_size() -> None:
    data = bytearray(_dnl_jpeg())
    frame_at = data.index(b"\xff\xc0")
    data[frame_at + 5 : frame_at + 9] = b"\x00\x30\x00\x00"  # height 48, width 0
    with pytest.raises(ImageRejected) as refused:
        decode_image(bytes(data))
    assert (refused.value.reason, refused.value.detail) == (
        "zero_size",
        "JPEG header declares a zero width (0x48)",
    )


def test_a_baseline_jpeg_whose_scan_header_says_zeros_is_read_as_libjpeg_reads_it() -> None:
    # Some baseline encoders write 0, 0, 0 for the scan's Ss, Se and Ah/Al (a sequential scan sends
    # every coefficient whatever they say; libjpeg only warns). The missing-scans check took Se 0 for
    # coefficients 1..63 never sent and refused the photo as truncated.
    whole = _jpeg()
    data = bytearray(whole)
    scan_at = data.index(b"\xff\xda")
    spectral_at = scan_at + 5 + 2 * data[scan_at + 4]  # marker, length, count, the components
    assert data[spectral_at : spectral_at + 3] == b"\x00\x3f\x00"
    data[spectral_at : spectral_at + 3] = b"\x00\x00\x00"
    with Image.open(io.BytesIO(whole)) as photo:
        assert ImageChops.difference(decode_image(bytes(data)), photo.convert("RGB")).getbbox() is None


@pytest.mark.parametrize("before", [b"\xff\xc4", b"\xff\xda"], ids=["a Huffman table", "the scan"])
@pytest.mark.parametrize("stray", [b"\x00\x00", b"\x12\xff\x00\x40\x00"], ids=["zeros", "a stuffed FF 00"])
def test_a_jpeg_with_stray_bytes_between_its_segments_is_read_as_libjpeg_reads_it(
    before: bytes, stray: bytes
) -> None:
    # libjpeg and Pillow skip bytes that are no marker between segments (libjpeg warns of "extraneous
    # bytes"). The missing-scans check's marker walk stopped there, saw no scan, and the photo was
    # refused as truncated. FF 00 outside a scan is no marker either: libjpeg (next_marker) and Pillow
    # discard it with the other extraneous bytes; the walk read it as a marker with a length (here
    # 0x4000), skipped the segments after it, saw no scan, and refused the photo as truncated.
    whole = _jpeg()
    at = whole.index(before)
    with Image.open(io.BytesIO(whole)) as photo:
        decoded = decode_image(whole[:at] + stray + whole[at:])
        assert ImageChops.difference(decoded, photo.convert("RGB")).getbbox() is None


# An 8x8 grey JPEG (white, its top two rows grey: Pillow, quality 50) made arithmetic-coded by
# `jpegtran -arithmetic -copy none`; Pillow writes no arithmetic coding.
_ARITHMETIC_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1R"
    "V19iZ2hnPk1xeXBkeFxlZ2P/yQALCAAIAAgBAREA/8wABgAQEAX/2gAIAQEAAD8A0mHugbqXi1kiyjUw/9k="
)


def test_an_arithmetic_coded_jpeg_is_read_as_libjpeg_reads_it() -> None:
    # Its decoder reads on past the scan's data by design (zeros, once it meets the marker) and its
    # encoder drops the final zero bytes: the cut-JPEG check's filler took their place, decoded other
    # pixels, and the photo was refused as truncated (46 of 60 products on white, re-coded so).
    with Image.open(io.BytesIO(_ARITHMETIC_JPEG)) as photo:
        assert ImageChops.difference(decode_image(_ARITHMETIC_JPEG), photo.convert("RGB")).getbbox() is None
