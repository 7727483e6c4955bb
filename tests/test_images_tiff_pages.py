"""A TIFF whose first page is not the photo (a reduced-size preview or a transparency mask ahead of it,
by its NewSubfileType) is read by its photo page: the small first page was ingested as the photo
without a word, since such pages are not counted as pages of their own."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from shared.errors import ImageRejected
from shared.evaluation.leakage import perceptual_hash
from shared.images import MAX_TIFF_PAGES, decode_image, decode_mask, frame_count

# NewSubfileType (tag 254): 1 a reduced-size copy of another page, 4 another page's transparency mask.
PREVIEW, MASK = 1, 4


def _picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth, detailed picture (waves of a few colours), so its perceptual hash says something."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(float)
    a, b, c = np.random.default_rng(seed).uniform(5, 30, 3)
    value = 128 + 60 * np.sin(x / a) + 60 * np.cos(y / b + x / c)
    return Image.fromarray(np.stack([value, value[::-1], 255 - value], -1).clip(0, 255).astype(np.uint8))


def _cut_out_mask(size: tuple[int, int] = (320, 240)) -> Image.Image:
    mask = Image.new("1", size)
    mask.paste(1, (size[0] // 8, size[1] // 8, size[0] * 7 // 8, size[1] * 7 // 8))
    return mask


def _tiff(*pages: tuple[Image.Image, int]) -> bytes:
    """A TIFF of ``pages``, each an image and its NewSubfileType, in that order."""
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer) as writer:
        for page, new_subfile_type in pages:
            page.save(writer, "TIFF", tiffinfo={254: new_subfile_type})
            writer.newFrame()
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "first",
    [(_picture(1, (80, 60)), PREVIEW), (_cut_out_mask(), MASK)],
    ids=["preview-first", "mask-first"],
)
def test_the_photo_page_is_decoded_past_a_preview_or_mask_ahead_of_it(first: tuple[Image.Image, int]) -> None:
    photo = _picture(1)
    data = _tiff(first, (photo, 0))
    assert frame_count(data) == 1, "one photo: no multi-page warning"
    decoded = decode_image(data)
    assert decoded.size == (320, 240)
    assert np.array_equal(np.asarray(decoded), np.asarray(photo))


def test_the_first_of_several_photo_pages_is_decoded_past_a_preview() -> None:
    data = _tiff((_picture(1, (80, 60)), PREVIEW), (_picture(2), 0), (_picture(3), 0))
    assert frame_count(data) == 2
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(_picture(2)))


def test_a_tiff_of_nothing_but_previews_is_read_by_its_first_page() -> None:
    # No page says it is the photo: the first is what there is, as before.
    data = _tiff((_picture(1, (80, 60)), PREVIEW), (_picture(2, (40, 30)), PREVIEW))
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(_picture(1, (80, 60))))


def test_the_pixel_limit_applies_to_the_photo_page_not_to_the_preview() -> None:
    data = _tiff((_picture(1, (80, 60)), PREVIEW), (_picture(1), 0))
    with pytest.raises(ImageRejected) as refused:
        decode_image(data, max_pixels=10_000)
    assert refused.value.reason == "too_many_pixels" and "320x240" in str(refused.value)


def _with_a_page_past_the_end(data: bytes) -> bytes:
    """``data`` (a little-endian TIFF) whose last page says another page follows, past the file's end."""
    patched = bytearray(data)
    (directory,) = struct.unpack_from("<I", patched, 4)
    while True:
        (entries,) = struct.unpack_from("<H", patched, directory)
        link = directory + 2 + 12 * entries
        (following,) = struct.unpack_from("<I", patched, link)
        if not following:
            struct.pack_into("<I", patched, link, len(patched) + 4096)
            return bytes(patched)
        directory = following


def test_a_preview_whose_photo_page_cannot_be_read_is_refused() -> None:
    # The directory of the page after the preview points past the end of the file: the photo is not
    # there, and the preview is no stand-in for it.
    data = _with_a_page_past_the_end(_tiff((_picture(1, (80, 60)), PREVIEW)))
    with pytest.raises(ImageRejected) as refused:
        decode_image(data)
    assert refused.value.reason == "corrupt" and "page 1" in str(refused.value)


@pytest.mark.parametrize("photos", [1, 2])
def test_pages_are_counted_up_to_a_page_that_cannot_be_read(photos: int) -> None:
    # Pillow reads a photo whose last page points past the end of the file (a cut-off save), and ingest
    # stores it; counting its pages for the multi-page warning raised TypeError and ingest stopped.
    data = _with_a_page_past_the_end(_tiff(*[(_picture(seed), 0) for seed in range(photos)]))
    assert decode_image(data).size == (320, 240)
    assert frame_count(data) == photos


def test_a_mask_file_is_read_by_its_mask_page_past_a_preview() -> None:
    mask = _cut_out_mask()
    data = _tiff((_cut_out_mask((80, 60)).convert("L"), PREVIEW), (mask.convert("L"), 0))
    assert np.array_equal(decode_mask(data) > 0, np.asarray(mask))


def test_the_copy_check_hashes_the_photo_page() -> None:
    # The held-out check hashes files as ingest reads them; hashed by a mask page ahead of the photo,
    # a copy of a held-out photo saved so was not found.
    photo = _picture(1)
    assert perceptual_hash(_tiff((_cut_out_mask(), MASK), (photo, 0))) == perceptual_hash(_png(photo))


def _with_short(data: bytes, page: int, tag: int, value: int) -> bytes:
    """``data`` (a little-endian TIFF) whose page ``page`` has ``value`` in its SHORT field ``tag``."""
    patched = bytearray(data)
    (directory,) = struct.unpack_from("<I", patched, 4)
    for _ in range(page):
        (entries,) = struct.unpack_from("<H", patched, directory)
        (directory,) = struct.unpack_from("<I", patched, directory + 2 + 12 * entries)
    (entries,) = struct.unpack_from("<H", patched, directory)
    for entry in range(directory + 2, directory + 2 + 12 * entries, 12):
        if struct.unpack_from("<H", patched, entry)[0] == tag:
            struct.pack_into("<H", patched, entry + 8, value)
            return bytes(patched)
    raise AssertionError(f"no tag {tag}")


def _with_compression(data: bytes, page: int, compression: int) -> bytes:
    """``data`` (a little-endian TIFF) whose page ``page`` says it is stored with ``compression``."""
    return _with_short(data, page, 259, compression)


JPEG_2000 = 34712  # a TIFF compression Pillow has no decoder for: its page's directory raises KeyError


@pytest.mark.parametrize("decode", [decode_image, decode_mask], ids=["photo", "mask"])
def test_a_preview_whose_photo_page_pillow_cannot_read_is_refused(decode: Callable[[bytes], object]) -> None:
    # Pillow raises KeyError for a page of a compression it does not know; seeking the photo page let it
    # out of decode_image, and ingest stopped with a traceback.
    data = _with_compression(_tiff((_picture(1, (80, 60)), PREVIEW), (_picture(1), 0)), 1, JPEG_2000)
    with pytest.raises(ImageRejected) as refused:
        decode(data)
    # Not damaged: stored in a way the user must save again, as a single such page (below) is refused.
    assert refused.value.reason == "format_not_allowed" and "page 1" in str(refused.value)
    # It says what the page is and what to do: "page 1 is unreadable: 34712" (the KeyError) said neither.
    assert "compression 34712 (JPEG 2000)" in refused.value.detail, refused.value.detail
    # A mask is told to be saved again as a mask, as PNG: it was told "the photo ... as PNG or JPEG".
    advice = "save the photo again as PNG or JPEG" if decode is decode_image else "save the mask again as PNG"
    assert "no decoder" in refused.value.detail, refused.value.detail
    assert refused.value.detail.endswith(advice), refused.value.detail


def test_a_page_of_a_compression_without_a_name_is_refused_by_its_number() -> None:
    data = _with_compression(_tiff((_picture(1, (80, 60)), PREVIEW), (_picture(1), 0)), 1, 40000)
    with pytest.raises(ImageRejected) as refused:
        decode_image(data)
    assert refused.value.reason == "format_not_allowed", refused.value
    assert "compression 40000, which" in refused.value.detail, refused.value.detail


@pytest.mark.parametrize(
    ("compression", "named"),
    [(JPEG_2000, "compression 34712 (JPEG 2000), which"), (40000, "compression 40000, which")],
    ids=["jpeg-2000", "unnamed"],
)
@pytest.mark.parametrize("decode", [decode_image, decode_mask], ids=["photo", "mask"])
def test_a_tiff_of_a_compression_pillow_cannot_decode_is_refused_naming_it(
    compression: int, named: str, decode: Callable[[bytes], object]
) -> None:
    # One page, so Pillow cannot even open it: it was refused as "bytes are not in any known image
    # format" (not_an_image), though it is a TIFF; the user must save it again, as with HEIC.
    data = _with_compression(_tiff((_picture(1), 0)), 0, compression)
    with pytest.raises(ImageRejected) as refused:
        decode(data)
    assert refused.value.reason == "format_not_allowed", refused.value
    assert named in refused.value.detail, refused.value.detail
    # A mask is saved again as a mask, and not as JPEG, which is no format a mask is read in: it said
    # "save the photo again as PNG or JPEG" of a mask too.
    advice = "save the photo again as PNG or JPEG" if decode is decode_image else "save the mask again as PNG"
    assert refused.value.detail.endswith(advice), refused.value.detail


def test_pages_are_counted_up_to_a_page_pillow_cannot_read() -> None:
    # The photo (page 0) decodes; counting its pages for the multi-page warning raised KeyError.
    data = _with_compression(_tiff((_picture(1), 0), (_picture(2), 0)), 1, JPEG_2000)
    assert decode_image(data).size == (320, 240)
    assert frame_count(data) == 1


@pytest.mark.parametrize(
    ("compression", "named"),
    [(5, "LZW"), (8, "Deflate"), (7, "JPEG"), (50000, "Zstandard")],
    ids=["lzw", "deflate", "jpeg", "zstd"],
)
@pytest.mark.parametrize("decode", [decode_image, decode_mask], ids=["photo", "mask"])
def test_a_tiff_whose_pixels_do_not_decode_with_its_compression_is_refused_naming_it(
    compression: int, named: str, decode: Callable[[bytes], object]
) -> None:
    # Uncompressed pixels under a directory that names a compression (a damaged or mislabelled page):
    # refused as corrupt with libtiff's "decoder error -2" alone, which says neither what was tried nor
    # what is wrong.
    data = _with_compression(_tiff((_picture(1), 0)), 0, compression)
    with pytest.raises(ImageRejected) as refused:
        decode(data)
    assert refused.value.reason == "corrupt", refused.value
    detail = refused.value.detail
    assert f"compression {compression} ({named})" in detail and "does not decode" in detail, detail
    assert ("the photo" if decode is decode_image else "the mask") in detail, detail


TRANSPARENCY_MASK = 4  # PhotometricInterpretation (tag 262) of a mask page, as the TIFF standard has it


@pytest.mark.parametrize("decode", [decode_image, decode_mask], ids=["photo", "mask"])
def test_a_tiff_whose_first_page_is_a_standard_transparency_mask_is_refused_naming_it(
    decode: Callable[[bytes], object],
) -> None:
    # A mask page as the standard writes it (PhotometricInterpretation 4) is no page Pillow can open,
    # and ahead of the photo it stops Pillow opening the file at all: refused as "bytes are not in any
    # known image format" (not_an_image), though it is a TIFF whose photo is there.
    data = _with_short(_tiff((_cut_out_mask(), MASK), (_picture(1), 0)), 0, 262, TRANSPARENCY_MASK)
    with pytest.raises(ImageRejected) as refused:
        decode(data)
    assert refused.value.reason == "format_not_allowed", refused.value
    assert "page 0 is a transparency mask" in refused.value.detail, refused.value.detail
    assert ("the photo" if decode is decode_image else "the mask") in refused.value.detail
    # After the photo it is passed over, as most readers pass it over: the photo is read as it is stored,
    # not cut out by it.
    data = _with_short(_tiff((_picture(1), 0), (_cut_out_mask(), MASK)), 1, 262, TRANSPARENCY_MASK)
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(_picture(1)))


def test_a_tiff_of_more_pages_than_the_cap_is_refused_not_walked_to_its_end() -> None:
    # Pillow's page walk slows with every page it has passed (1.5 s at 3,000 previews, 30,000 did not end
    # in 300 s): a small file could stall any stage decoding it, and ingest counting its pages.
    tiny = Image.new("L", (1, 1))
    previews = _tiff(*[(tiny, PREVIEW)] * (MAX_TIFF_PAGES + 1))
    photo_first = _tiff((tiny, 0), *[(tiny, PREVIEW)] * MAX_TIFF_PAGES)
    for refused_by in (
        lambda: decode_image(previews),
        lambda: decode_mask(previews),
        lambda: frame_count(photo_first),
    ):
        with pytest.raises(ImageRejected) as refused:
            refused_by()
        assert refused.value.reason == "too_many_pages" and str(MAX_TIFF_PAGES) in str(refused.value)


def test_a_tiff_of_as_many_pages_as_the_cap_is_read() -> None:
    tiny = Image.new("L", (1, 1))
    assert decode_image(_tiff(*[(tiny, PREVIEW)] * (MAX_TIFF_PAGES - 1), (_picture(1), 0))).size == (320, 240)
    assert frame_count(_tiff(*[(tiny, 0)] * MAX_TIFF_PAGES)) == MAX_TIFF_PAGES
