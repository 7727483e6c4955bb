"""A TIFF whose photo page comes after a preview (or mask) is decoded by libtiff from that page's
directory, and libtiff, handed a directory it has not read, walks the file's whole directory chain
first (``TIFFSetSubDirectory``, libtiff 4.5 on): ``MAX_TIFF_PAGES`` held only Pillow's own walk, which
stops at the photo page, so pages after it were walked without a cap (a 6 MB file of a million empty
directories cost about a second per decode, in every stage and the console that read it)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from shared.errors import ImageRejected
from shared.images import MAX_TIFF_PAGES, decode_image, decode_mask, frame_count

PREVIEW = 1  # NewSubfileType (tag 254): a reduced-size copy of another page


def _tiff(*pages: tuple[Image.Image, int], compression: str = "tiff_lzw") -> bytes:
    """A TIFF of ``pages``, each an image and its NewSubfileType, in that order, compressed (libtiff
    decodes it)."""
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer) as writer:
        for page, new_subfile_type in pages:
            page.save(writer, "TIFF", tiffinfo={254: new_subfile_type}, compression=compression)
            writer.newFrame()
    return buffer.getvalue()


def _photo() -> Image.Image:
    return Image.new("RGB", (64, 48), (30, 140, 60))


DECODERS: list[Callable[[bytes], object]] = [decode_image, decode_mask]


@pytest.mark.parametrize("decode", DECODERS, ids=["photo", "mask"])
def test_pages_after_the_photo_page_past_the_cap_are_refused(decode: Callable[[bytes], object]) -> None:
    tiny = Image.new("L", (1, 1))
    # Before: decoded, page 1 being the first of its own, while libtiff walked every directory.
    data = _tiff((tiny, PREVIEW), (_photo(), 0), *[(tiny, PREVIEW)] * (MAX_TIFF_PAGES - 1))
    with pytest.raises(ImageRejected) as refused:
        decode(data)
    assert refused.value.reason == "too_many_pages" and str(MAX_TIFF_PAGES) in str(refused.value)


@pytest.mark.parametrize("decode", DECODERS, ids=["photo", "mask"])
def test_a_photo_page_after_a_preview_in_as_many_pages_as_the_cap_is_read(
    decode: Callable[[bytes], object],
) -> None:
    tiny = Image.new("L", (1, 1))
    data = _tiff((tiny, PREVIEW), (_photo(), 0), *[(tiny, PREVIEW)] * (MAX_TIFF_PAGES - 2))
    assert np.asarray(decode(data)).shape[:2] == (48, 64)


@pytest.mark.parametrize("decode", DECODERS, ids=["photo", "mask"])
def test_a_photo_first_with_pages_past_the_cap_is_refused_as_ingest_refuses_it(
    decode: Callable[[bytes], object],
) -> None:
    # Before, the stages and the console's mask upload decoded its first page (libtiff walks nothing
    # to read it), while ingest, counting its pages, refused the same file: the entry points disagreed.
    tiny = Image.new("L", (1, 1))
    data = _tiff((_photo(), 0), *[(tiny, PREVIEW)] * MAX_TIFF_PAGES)
    for refused_by in (lambda: decode(data), lambda: frame_count(data)):
        with pytest.raises(ImageRejected) as refused:
            refused_by()
        assert refused.value.reason == "too_many_pages" and str(MAX_TIFF_PAGES) in str(refused.value)


@pytest.mark.parametrize("decode", DECODERS, ids=["photo", "mask"])
def test_a_photo_first_in_as_many_pages_as_the_cap_is_read(decode: Callable[[bytes], object]) -> None:
    tiny = Image.new("L", (1, 1))
    data = _tiff((_photo(), 0), *[(tiny, PREVIEW)] * (MAX_TIFF_PAGES - 1))
    assert np.asarray(decode(data)).shape[:2] == (48, 64)
    assert frame_count(data) == 1
