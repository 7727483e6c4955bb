"""A TIFF whose directory entries have the wrong field type (a fuzzer's favourite damage) is decoded or
refused with a reason, never raised past ``ImageRejected``: an uncompressed TIFF whose StripOffsets
was a RATIONAL, a text or a float raised TypeError out of ``decode_image``, and one whose StripOffsets
was a LONG8 past 2**63 raised OverflowError, so ingest stopped with a traceback (a seeded mutation
fuzz of small TIFF, PNG, JPEG and WebP files, over 100,000 cases, found these two and nothing else)."""

from __future__ import annotations

import contextlib
import io
import struct

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageRejected
from shared.evaluation.leakage import perceptual_hash
from shared.images import decode_image, decode_mask, frame_count

STRIP_OFFSETS = 273
# TIFF field types, by number: 1 BYTE, 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL, 6 SBYTE, 7 UNDEFINED,
# 8 SSHORT, 9 SLONG, 10 SRATIONAL, 11 FLOAT, 12 DOUBLE, 13 IFD, 16 LONG8, 17 SLONG8, 18 IFD8.
ASCII, RATIONAL, UNDEFINED, FLOAT, LONG8 = 2, 5, 7, 11, 16


def _tiff(image: Image.Image) -> bytes:
    """``image`` as an uncompressed little-endian TIFF, as Pillow writes it: one strip, one directory."""
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def _entries(data: bytes) -> list[int]:
    """Where each entry of the first directory of ``data`` (a little-endian TIFF) starts."""
    (directory,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, directory)
    return [directory + 2 + 12 * index for index in range(count)]


def _with_field_type(data: bytes, entry: int, field_type: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into("<H", patched, entry + 2, field_type)
    return bytes(patched)


def _strip_offsets_entry(data: bytes) -> int:
    return next(
        entry for entry in _entries(data) if struct.unpack_from("<H", data, entry)[0] == STRIP_OFFSETS
    )


def _with_strip_past_any_file(data: bytes) -> bytes:
    """``data`` whose StripOffsets is a LONG8 of 2**63 + 5: 8 bytes, so it lies where the entry points,
    here at the file's end."""
    entry = _strip_offsets_entry(data)
    patched = bytearray(_with_field_type(data, entry, LONG8))
    struct.pack_into("<I", patched, entry + 8, len(patched))
    return bytes(patched) + struct.pack("<Q", 2**63 + 5)


PHOTO = _tiff(Image.new("RGB", (4, 4), (200, 40, 10)))


@pytest.mark.parametrize("field_type", [RATIONAL, ASCII, FLOAT, UNDEFINED])
def test_a_tiff_whose_strip_offsets_is_no_whole_number_is_refused_as_corrupt(field_type: int) -> None:
    # The one offset's four bytes read as a fraction, a character, a float or a byte: no place in the file.
    data = _with_field_type(PHOTO, _strip_offsets_entry(PHOTO), field_type)
    for decode in (decode_image, decode_mask):
        with pytest.raises(ImageRejected) as refused:
            decode(data)
        assert refused.value.reason == "corrupt", refused.value
        assert "StripOffsets" in refused.value.detail, refused.value.detail
        # A mask is saved again as a mask, as PNG: it said "save the photo again" of a mask too, then
        # "save the mask again with an image editor", which does not say in which format.
        advice = "save the photo again" if decode is decode_image else "save the mask again as PNG"
        assert advice in refused.value.detail, refused.value.detail


def test_the_copy_check_takes_such_a_tiff_for_no_image() -> None:
    # The held-out copy check reads a photo's pixels itself (a grey thumbnail); it raised the same
    # TypeError and OverflowError, and evaluation stopped with a traceback on one damaged file.
    assert perceptual_hash(_with_field_type(PHOTO, _strip_offsets_entry(PHOTO), RATIONAL)) is None
    assert perceptual_hash(_with_strip_past_any_file(PHOTO)) is None


def test_a_tiff_whose_strip_lies_past_any_file_is_refused_as_truncated() -> None:
    with pytest.raises(ImageRejected) as refused:
        decode_image(_with_strip_past_any_file(PHOTO))
    assert refused.value.reason == "truncated", refused.value
    assert str(2**63 + 5) in refused.value.detail, refused.value.detail


@pytest.mark.parametrize(
    "photo",
    [PHOTO, _tiff(Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200))],
    ids=["rgb", "16-bit grey"],
)
def test_every_directory_entry_of_every_field_type_is_decoded_or_refused(photo: bytes) -> None:
    # Deterministic and fast (a few hundred decodes of a tiny file): each entry of the directory given
    # each field type there is (0 and 14, 15: none), read as ingest and the mask reader read it.
    for entry in _entries(photo):
        for field_type in range(19):
            data = _with_field_type(photo, entry, field_type)
            for decode in (decode_image, decode_mask):
                with contextlib.suppress(ImageRejected):
                    decode(data)
            assert frame_count(data) >= 1
