"""The copy check takes a file whose pixels cannot be read for no image (no hash), as it does one that
does not open: a PNG whose pixel data is broken raised SyntaxError out of ``perceptual_hash`` (found by
a seeded mutation fuzz), and one damaged held-out or store file stopped evaluation with a traceback."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageRejected
from shared.evaluation.leakage import copy_hashes, perceptual_hash
from shared.images import decode_image


def _png_with_a_short_pixel_chunk() -> bytes:
    """A PNG whose IDAT chunk says it is 20 bytes shorter than it is: the rest of its data is then
    read as the next chunk, which has no chunk type there (Pillow: "broken PNG file")."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    data = buffer.getvalue()
    pixels_at = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[pixels_at - 4 : pixels_at])
    return data[: pixels_at - 4] + struct.pack(">I", length - 20) + data[pixels_at:]


def test_a_png_whose_pixel_data_is_broken_has_no_hash() -> None:
    data = _png_with_a_short_pixel_chunk()
    with pytest.raises(ImageRejected) as refused:
        decode_image(data)  # what ingest says of it
    assert refused.value.reason == "corrupt", refused.value
    assert perceptual_hash(data) is None
    assert copy_hashes(data) is None
