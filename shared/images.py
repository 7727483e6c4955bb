"""Hardened image decoding and deterministic PNG encoding, used by every stage that touches pixels.

Every image arrives from outside (retailer photos, generated images, human-made masks), so
decoding refuses with a machine-readable ``ImageRejected`` reason instead of crashing or
silently repairing:

``empty``               zero bytes
``too_large_bytes``     more bytes than ``max_bytes``
``not_an_image``        Pillow cannot identify the bytes as any image format
``format_not_allowed``  an image, but not one of ``allowed_formats`` (HEIC/HEIF and AVIF, an
                        iPhone's photos however they are named, are told apart and named), or a
                        TIFF stored with a compression Pillow has no decoder for (JPEG 2000...)
                        or whose first page is another page's transparency mask
``zero_size``           the header declares a zero width or height
``too_many_pixels``     the header declares more than ``max_pixels`` (checked before decoding;
                        Pillow's own decompression-bomb limit counts as well), and the image
                        cannot be decoded scaled down to fit (below)
``truncated``           the file ends before its header says it does, or its pixel data ends early (a
                        JPEG's too, closed with an end marker after the cut); a cut TIFF (its directory
                        comes last when compressed) and a cut WebP (RIFF length) are told apart too
``corrupt``             the pixel data is damaged (bad checksum, broken stream...)
``unsupported_mode``    a pixel layout that cannot be turned into RGB / a mask
``too_many_pages``      a TIFF of more than ``MAX_TIFF_PAGES`` pages (its chain of page directories,
                        counted from the file before any page walk), whichever page is its photo

Odd but valid images are converted, never refused: 16-bit and 32-bit grayscale are rescaled (not
clipped) to 8 bits (a mask whose values all fit in 0..255, and a 32-bit photo's, is read as those
8-bit values, a 0/1 label mask by its labels, and a Lab mask by its lightness), CMYK / palette /
grayscale / bilevel become RGB, images with alpha (an alpha channel, or a transparent colour key:
PNG tRNS) are composited over white (product photos are shot and sold on white; a 32-bit BMP whose
alpha bytes are all 0 is opaque, as Windows reads it), an embedded ICC colour profile (Display P3,
an iPhone's default; Adobe RGB; a CMYK press profile; a grey one, on grey with or without alpha at
any depth) is converted to sRGB, EXIF orientation is applied and animated images yield their first
frame (a TIFF its first page that is no reduced-size preview or transparency mask of another; such a
mask is not applied as the photo's transparency). A
JPEG with more pixels than ``max_pixels`` (a 48, 108 or 200 MP phone photo, even past Pillow's own
decompression-bomb limit) is decoded at 1/2, 1/4 or 1/8 of its size, the largest that fits, rather
than refused. A JPEG whose every scan is whole but which lacks its end marker (EOI:
some cameras and uploaders leave it off) is read; one cut short stays ``truncated``. A progressive JPEG
ended by its end marker that leaves out its final refinement scans (every coefficient's last bit) is read.
``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left off: a half image is not a photo.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import (
    ExifTags,
    Image,
    ImageChops,
    ImageCms,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    TiffImagePlugin,
    TiffTags,
    UnidentifiedImageError,
)

from shared.errors import ImageRejected

log = logging.getLogger("skuforge.images")

# Every image past Pillow's bomb-warning threshold is refused in our words (``_pixel_limit``), or a JPEG
# decoded scaled down under it: the warning adds nothing but two lines of Pillow's source on stderr
# ("... could be decompression bomb DOS attack.") before the refusal, or before a photo that is then
# taken. Set once, here, not with ``warnings.catch_warnings`` around each decode (not thread-safe).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow's EXIF reader (TiffImagePlugin) warns of a block it cannot read whole ("Possibly corrupt EXIF
# data", "Tag data larger than file", "Truncated File Read"): common in phone photos saved by editing
# apps, whose pixels are whole; such a block loses at most its orientation (``apply_exif_orientation``).
# A TIFF whose own structure is broken is refused in our words.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 2**20
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
# Ends a too_many_pixels refusal past Pillow's own limit, which no setting of ours raises (such a refusal
# has no ``setting``).
PAST_PILLOWS_LIMIT = "SKUFORGE_MAX_IMAGE_PIXELS cannot raise it, so raising that setting does not help"
# The file names of those formats: what ``skuforge ingest`` and ``skuforge evaluate`` take as photos.
PHOTO_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
# Pillow names multi-picture JPEGs (what many phones write) "MPO"; they are JPEGs to us.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# Compression level is fixed so equal pixels always give equal bytes (and equal sha256).
PNG_COMPRESS_LEVEL = 6
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "P", "RGB", "RGBA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
# The modes an ICC profile is applied to, the colour space its profile must have, and the mode it
# becomes in sRGB (alpha is carried through). Grey with alpha and high-bit-depth grey are brought to
# L first (``_to_srgb``).
_ICC_MODES = {"RGB": ("RGB", "RGB"), "RGBA": ("RGB", "RGBA"), "CMYK": ("CMYK", "RGB"), "L": ("GRAY", "RGB")}
# ISO-BMFF ``ftyp`` brands of HEIC/HEIF and AVIF files: what an iPhone writes, often named .jpg.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis", b"avif"})
# A TIFF's byte order, and the formats of its offsets and counts, by its first four bytes (BigTIFF: 8-byte).
_TIFF_LAYOUTS = {
    b"II*\x00": ("<", "I", "H"),
    b"MM\x00*": (">", "I", "H"),
    b"II+\x00": ("<", "Q", "Q"),
    b"MM\x00+": (">", "Q", "Q"),
}
# NewSubfileType (tag 254) bits of a TIFF page that belongs to another page rather than being one.
_TIFF_REDUCED, _TIFF_MASK = 1, 4
# PhotometricInterpretation (tag 262) of a transparency mask page, by the TIFF standard.
_TIFF_MASK_PHOTOMETRIC = 4
# The most pages of a TIFF walked (a product photo's TIFF has a handful): Pillow's walk slows with every
# page it has passed, and a 1.4 MB file of 30,000 previews did not end in 300 s.
MAX_TIFF_PAGES = 256
# What Pillow raises for a TIFF page whose directory cannot be read (TypeError "Missing dimensions"
# for one past the end of the file, KeyError for a compression it has no decoder for: JPEG 2000).
_UNREADABLE_TIFF_PAGE = (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error)
# TIFF compressions by their number (libtiff's tiff.h): those Pillow decodes, and some it has no decoder for.
_TIFF_COMPRESSION_NAMES = {
    2: "CCITT RLE",
    3: "CCITT Group 3",
    4: "CCITT Group 4",
    5: "LZW",
    6: "old-style JPEG",
    7: "JPEG",
    8: "Deflate",
    32773: "PackBits",
    32809: "ThunderScan",
    32946: "Deflate",
    34676: "SGILog",
    34677: "SGILog24",
    34925: "LZMA",
    50000: "Zstandard",
    50001: "WebP",
    34661: "JBIG",
    34712: "JPEG 2000",
    34887: "LERC",
    50002: "JPEG XL",
}
# Bytes per value of each TIFF field type, by its number: 1 BYTE, 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL...
# 16 LONG8, 17 SLONG8, 18 IFD8 (BigTIFF).
_TIFF_TYPE_SIZES = dict(enumerate((0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 0, 0, 8, 8, 8)))
_JPEG_SCALES = (2, 4, 8)  # the scales libjpeg decodes at, besides 1
_STRIP_PIXELS = 2**20  # pixels per strip of rows that pixel_array copies and compositing blends

UInt8Array = npt.NDArray[np.uint8]
# What a file is read as, which a refusal's advice names: a photo is saved again as PNG or JPEG, a mask
# as PNG.
Subject = Literal["photo", "mask"]


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_formats: Sequence[str] = DEFAULT_FORMATS,
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded 8-bit ``RGB`` image in sRGB.

    EXIF orientation is applied, alpha is composited over white, high-bit-depth grayscale is
    rescaled to 8 bits and an embedded ICC profile is converted to sRGB (one that cannot be read or
    applied is ignored: the pixels are kept as they are). A photo with a profile other than sRGB
    therefore decodes to other pixels than before profiles were applied, and its photo id (the
    sha256 of the stored PNG) changed with them. A JPEG with more than ``max_pixels`` pixels is
    decoded at 1/2, 1/4 or 1/8 of its size, the largest that fits, so the image may be smaller
    than the file's header says. Raises ``ImageRejected`` with one of the reason codes listed in
    this module's docstring.
    """
    image = _open_and_load(
        data, max_pixels=max_pixels, max_bytes=max_bytes, allowed_formats=allowed_formats, scale_jpeg=True
    )
    return _to_rgb(image, data)


def to_rgb(image: Image.Image, data: bytes = b"") -> Image.Image:
    """An image of any mode as 8-bit ``RGB``, converted as ``decode_image`` converts: alpha and a
    transparent colour key composited over white, 16-bit and 32-bit grayscale rescaled (not
    clipped), an embedded ICC profile converted to sRGB. ``data`` is the file the image was decoded
    from, where there is one: a PNG's colour key is in the file's bit depth. Raises
    ``ImageRejected('unsupported_mode')`` for a mode that has no RGB."""
    return _to_rgb(image, data)


def decode_mask(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_formats: Sequence[str] = ("PNG", "BMP", "TIFF", "WEBP"),
) -> UInt8Array:
    """Decode an untrusted mask image into a ``uint8`` HxW array of 0 (background) and 255 (object).

    The image is reduced to luminance (16-bit masks rescaled, not clipped; a Lab mask's lightness) and
    thresholded at 128. A 16- or 32-bit greyscale (or 16-bit RGB PNG) mask whose values all lie in
    0..255 holds 8-bit values (an 8-bit mask saved as uint16, as OpenCV and numpy do) and is read as
    those, not rescaled: rescaled, its 255 would be 1 and the whole mask background. A mask that marks
    nothing that way but is a 0/1 label image (greyscale or palette, only the values 0 and 1: a
    segmentation dataset's class mask) marks its label-1 pixels. Transparent pixels count as background:
    alpha is composited over black. EXIF orientation is applied, as ``decode_image`` does, so a mask
    stays aligned with its photo. Refusals are the same ``ImageRejected`` reasons as ``decode_image``.
    """
    image = _open_and_load(
        data, max_pixels=max_pixels, max_bytes=max_bytes, allowed_formats=allowed_formats, what="mask"
    )
    gray = _to_gray8(image, data)
    # Thresholded in place: np.where and astype made two more mask-sized arrays (115 MiB traced
    # for a 38 MiB mask at 40 MP).
    mask = gray if gray.flags.writeable else gray.copy()
    np.greater_equal(mask, 128, out=mask)
    mask *= 255
    if not mask.any():
        labels = _label_mask(image)
        if labels is not None:
            return labels
    return mask


def _label_mask(image: Image.Image) -> UInt8Array | None:
    """The product (255) of a 0/1 label image (label 1; the rest 0), None for anything else.

    Segmentation datasets store a class mask as label values, not brightness: read by brightness every
    pixel of it is background, and training took it as a photo with no product in it. Only a
    single-channel image without transparency whose values are exactly 0 and 1, both present, counts.
    """
    if image.mode not in ("L", "P", "I", *_SIXTEEN_BIT_MODES) or "transparency" in image.info:
        return None
    if image.width == 0 or image.height == 0 or _extrema(image) != (0, 1):
        return None
    return _converted(image, lambda values, _top, _bottom: np.where(values == 1, np.uint8(255), np.uint8(0)))


def pixel_array(image: Image.Image) -> npt.NDArray[Any]:
    """The image's pixels as a new, writable array: what ``np.asarray(image)`` gives, the same shape,
    dtype and values, copied a strip of rows at a time. ``np.asarray`` goes through ``Image.tobytes``,
    which holds the whole image twice (its chunks and their join): 229 MiB traced for a 40 MP RGB
    image whose array is 114 MiB."""
    return _converted(image, lambda pixels, _top, _bottom: pixels)


# What _converted applies to each strip: its pixels (as np.asarray gives them) and its top and bottom row.
_StripConversion = Callable[[npt.NDArray[Any], int, int], npt.NDArray[Any]]


def _converted(image: Image.Image, convert: _StripConversion) -> npt.NDArray[Any]:
    """``convert`` applied to the image's pixels a strip of rows at a time, the strips' results joined
    top to bottom into a new array: for a conversion pixel by pixel, what it gives the whole image,
    holding one strip's pixels at a time besides the result."""
    width, height = image.size
    strips = _strips(width, height)
    top, bottom = next(strips)
    first = convert(np.asarray(image.crop((0, top, width, bottom))), top, bottom)
    converted = np.empty((height, *first.shape[1:]), dtype=first.dtype)
    converted[top:bottom] = first
    for top, bottom in strips:
        converted[top:bottom] = convert(np.asarray(image.crop((0, top, width, bottom))), top, bottom)
    return converted


def _extrema(
    image: Image.Image, prepare: Callable[[npt.NDArray[Any]], npt.NDArray[Any]] = np.asarray
) -> tuple[Any, Any]:
    """The smallest and largest value of a single-band image (a palette image's indices), read a strip
    at a time (Pillow's ``getextrema`` refuses some 16-bit modes), each strip's values passed through
    ``prepare`` first. The image must have pixels."""
    width, height = image.size
    lows, highs = [], []
    for top, bottom in _strips(width, height):
        values = prepare(np.asarray(image.crop((0, top, width, bottom))))
        lows.append(values.min())
        highs.append(values.max())
    return min(lows), max(highs)


def _strips(width: int, height: int) -> Iterator[tuple[int, int]]:
    """The (top, bottom) rows of each strip of about ``_STRIP_PIXELS`` pixels, top to bottom; at
    least one strip, even for an image of no rows."""
    rows = max(1, _STRIP_PIXELS // max(1, width))
    yield 0, min(rows, height)
    for top in range(rows, height, rows):
        yield top, min(top + rows, height)


def _composited(image: Image.Image, *, background: int, alpha: UInt8Array | None = None) -> UInt8Array:
    """``image``'s colour bands blended over a flat ``background`` (``_composite``) by its alpha: its
    last band (``LA``, ``RGBA``), or ``alpha`` (HxW) when given (then every band is colour; ``L``,
    ``RGB``). HxW for one colour band, HxWx3 for three. Blended a strip of rows at a time: blended
    whole, the uint16 copies and the blend's temporaries held 22 bytes a pixel (880 MiB at 40 MP) for
    a 3-byte-a-pixel result."""

    def blend(pixels: npt.NDArray[Any], top: int, bottom: int) -> UInt8Array:
        values = pixels.astype(np.uint16).reshape(*pixels.shape[:2], -1)
        if alpha is None:
            colour, weight = values[..., :-1], values[..., -1:]
        else:
            colour, weight = values, alpha[top:bottom, :, None].astype(np.uint16)
        blended = _composite(colour, weight, background=background)
        return blended[..., 0] if blended.shape[2] == 1 else blended

    return _converted(image, blend)


def format_named_otherwise(name: str, data: bytes) -> str | None:
    """The format ``data`` holds (Pillow's name: "GIF") when the extension of the file ``name`` says
    another (a GIF saved as photo.jpg; "HEIC", which Pillow does not read, by its ftyp box); None when
    they agree, or when either says nothing known."""
    said = Image.registered_extensions().get(PurePosixPath(name).suffix.lower())
    try:
        with Image.open(io.BytesIO(data)) as image:
            held = _FORMAT_ALIASES.get(image.format or "", image.format or "")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError):
        # Pillow reads no HEIC, which an iPhone writes and often names .jpg: told by its ftyp box (an
        # AVIF Pillow could not open by its own brand).
        brands = _ftyp_brands(data) & _HEIF_BRANDS
        held = "AVIF" if b"avif" in brands else "HEIC" if brands else ""
    return held if said is not None and held and held != _FORMAT_ALIASES.get(said, said) else None


def refuse_oversized(size_bytes: int, max_bytes: int) -> None:
    """``ImageRejected('too_large_bytes')`` for more than ``max_bytes``; a caller holding a file can
    ask with its size before reading it."""
    if size_bytes > max_bytes:
        raise too_large_bytes(f"{size_bytes} bytes", max_bytes)


def too_large_bytes(found: str, max_bytes: int) -> ImageRejected:
    """The ``too_large_bytes`` refusal of what holds ``found`` (``"123 bytes"``, or ``"more than 100
    bytes"`` from a read that stopped there), over ``max_bytes``."""
    return ImageRejected(
        "too_large_bytes", f"{found}; at most {max_bytes} are allowed", setting="SKUFORGE_MAX_IMAGE_BYTES"
    )


def refuse_too_many_pixels(width: int, height: int, max_pixels: int, why: str) -> None:
    """``ImageRejected('too_many_pixels')`` for an image an event says is ``width`` x ``height``, when
    that is more pixels than decoding allows; asked before reading it by a caller that needs the image
    at that size (``why`` says what for). ``decode_image`` would decode a baseline JPEG this large
    scaled down to fit, and the caller's size check would then blame a truthful event
    (``dimension_mismatch``)."""
    if width * height > _pixel_limit(max_pixels):
        raise _too_many_pixels(width, height, max_pixels, why)


def photo_as_stored(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Image.Image, bytes]:
    """A photo file as skuforge stores it: decoded (``decode_image``: EXIF orientation applied, an
    embedded colour profile converted to sRGB, 8-bit RGB, a JPEG over ``max_pixels`` scaled down) and
    re-encoded as PNG (``encode_png``). ``skuforge ingest`` stores these bytes, so a JPEG never
    matches its stored copy byte for byte, and the photo id (the PNG's sha256) of a photo with a
    profile other than sRGB is not what it was before profiles were applied; ``skuforge evaluate``
    compares held-out photos with the store through this. Raises ``ImageRejected``."""
    image, png, _ = photo_and_transparency(data, max_pixels=max_pixels, max_bytes=max_bytes)
    return image, png


def photo_and_transparency(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    refuse_empty: bool = False,
) -> tuple[Image.Image, bytes, UInt8Array | None]:
    """``photo_as_stored``'s image and PNG, and ``transparency_mask`` of the file, from one decode.
    With ``refuse_empty``, a file whose every pixel is transparent (an empty layer exported) is
    ``ImageRejected('blank_photo')``: over white it is a plain white picture with nothing in it."""
    loaded = _open_and_load(
        data, max_pixels=max_pixels, max_bytes=max_bytes, allowed_formats=DEFAULT_FORMATS, scale_jpeg=True
    )
    mask = transparency_mask(loaded, data)
    if refuse_empty and mask is None and _every_pixel_transparent(loaded, data):
        raise ImageRejected("blank_photo", "every pixel is transparent: an empty layer, no product in it")
    image = _to_rgb(loaded, data)
    return image, encode_png(image), mask


def frame_count(data: bytes) -> int:
    """How many frames or pages a photo file holds (an animated PNG or WebP, a multi-page TIFF), of
    which ``decode_image`` reads the first (``seek_photo_page``). A multi-picture JPEG (MPO: a phone's
    photo and its preview or depth map) is one photo, and a TIFF page that is a reduced-size copy of
    another (a preview) or another page's transparency mask is no page of its own. 1 for bytes that
    do not open as an image; ``ImageRejected('too_many_pages')`` for a TIFF of more than
    ``MAX_TIFF_PAGES`` pages."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if _FORMAT_ALIASES.get(image.format or "") == "JPEG":
                return 1
            if isinstance(image, TiffImagePlugin.TiffImageFile):
                _refuse_long_directory_chain(image)  # the rule seek_photo_page applies, before any walk
                return max(1, _full_size_pages(image))
            return int(getattr(image, "n_frames", 1))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError):
        return 1


def seek_photo_page(image: Image.Image, what: Subject = "photo") -> None:
    """Make an opened (not loaded) TIFF's current page its first page of its own, past a reduced-size
    preview or a transparency mask ahead of it (``_belongs_to_another_page``); such a first page was
    read as the photo without a word, since it is not counted as a page. Only directories are read to
    find it, no pixels, and the pixel limits then apply to that page, as it is the one decoded. The
    first page where no page is one of its own; nothing for any other image. Raises
    ``ImageRejected('corrupt')`` when the directory of a page after such a first page cannot be read:
    the photo is not there, and the preview is no stand-in for it (``format_not_allowed`` when it is
    stored with a compression Pillow has no decoder for: the user must save it again, not repair it;
    ``what`` the file is, which the advice names), and ``too_many_pages`` for a TIFF of more than
    ``MAX_TIFF_PAGES`` pages (its chain of page directories, ``_refuse_long_directory_chain``),
    whichever page is the photo: ``frame_count`` refuses the same files, so ingest and every stage and
    the console that decode them agree."""
    if not isinstance(image, TiffImagePlugin.TiffImageFile):
        return
    # Counted from the file, not by Pillow's page walk (slower with every page it has passed).
    _refuse_long_directory_chain(image)
    if not _belongs_to_another_page(image):
        return
    for index in itertools.count(1):
        try:
            _seek_page(image, index)
        except EOFError:
            image.seek(0)
            return
        except _UNREADABLE_TIFF_PAGE as exc:
            no_decoder = _no_decoder(image.tag_v2, what)
            raise ImageRejected(
                "corrupt" if no_decoder is None else "format_not_allowed",
                f"TIFF page 0 is a preview or mask of another page, and page {index} is unreadable: "
                + (no_decoder or str(exc)),
            ) from exc
        if not _belongs_to_another_page(image):
            return


def _refuse_long_directory_chain(tiff: TiffImagePlugin.TiffImageFile) -> None:
    """``ImageRejected('too_many_pages')`` for a TIFF whose chain of page directories is longer than
    ``MAX_TIFF_PAGES``, read from its file (counts and links only). Asked of every TIFF, before any page
    walk: where the page to decode is not the first, libtiff, handed a directory it has not read, walks
    the whole chain first (libtiff 4.5 on, ``TIFFSetSubDirectory``), past the page Pillow's capped walk
    stopped at (a 6 MB file of a million empty directories cost a second per decode); where it is the
    first, the file is refused all the same, as ingest's page count refuses it. A chain that cannot be
    read on stops the count there."""
    file = tiff.fp
    at = file.tell()
    try:
        file.seek(0)
        layout = _TIFF_LAYOUTS.get(file.read(4))
        if layout is None:
            return
        order, offset_format, count_format = layout
        offset_size, count_size = struct.calcsize(offset_format), struct.calcsize(count_format)
        entry_size = 4 + 2 * offset_size  # tag, type, value count, value or its offset: 12 (BigTIFF 20)

        def read(position: int, field: str, size: int) -> int | None:
            try:
                file.seek(position)
                raw = file.read(size)
            except (OSError, OverflowError, ValueError):  # a position no file has
                return None
            return int(struct.unpack(order + field, raw)[0]) if len(raw) == size else None

        offset = read(8 if offset_format == "Q" else 4, offset_format, offset_size)
        seen: set[int] = set()
        while offset and offset not in seen:  # a link back to a page read ends the chain, as in libtiff
            if len(seen) == MAX_TIFF_PAGES:
                raise _too_many_pages()
            seen.add(offset)
            count = read(offset, count_format, count_size)
            # Past the file's end, the chain ends there for libtiff too.
            offset = (
                None
                if count is None
                else read(offset + count_size + count * entry_size, offset_format, offset_size)
            )
    finally:
        file.seek(at)


def _no_decoder(directory: TiffImagePlugin.ImageFileDirectory_v2, what: Subject) -> str | None:
    """What is wrong and what to do when the TIFF page of ``directory`` (of a ``what``) is stored with
    a compression Pillow has no decoder for (named: its KeyError said only the number, "34712"); None
    otherwise. Pillow reads a page's directory before it sets the page up, so a page it could not open
    has one."""
    compression = directory.get(259, 1)
    if not isinstance(compression, int) or compression in TiffImagePlugin.COMPRESSION_INFO:
        return None
    return (
        f"it is stored with {_tiff_compression(compression)}, which this reader has no decoder for; "
        + _save_again(what)
    )


def _undecodable_tiff_pixels(image: Image.Image, what: Subject, error: Exception) -> str | None:
    """Why the pixels of a compressed TIFF page (of a ``what``) that failed to decode with ``error``
    were refused: they do not decode with the compression its directory names (damaged, or written
    another way), which libtiff's "decoder error -2" alone did not say. None for other images."""
    if not isinstance(image, TiffImagePlugin.TiffImageFile):
        return None
    compression = image.tag_v2.get(259, 1)
    if not isinstance(compression, int) or compression == 1:  # 1: uncompressed, nothing to decode with
        return None
    return (
        f"TIFF pixel data does not decode with {_tiff_compression(compression)}, which its directory "
        f"names ({error}): the data is damaged or stored another way; {_save_again(what)}"
    )


def _tiff_compression(compression: int) -> str:
    """A TIFF compression by its number and, where known, its name: "compression 5 (LZW)"."""
    name = _TIFF_COMPRESSION_NAMES.get(compression)
    return f"compression {compression}{f' ({name})' if name else ''}"


def _save_again(what: Subject) -> str:
    """What to do with a file that must be saved again: in a format it is read in (a mask is no JPEG)."""
    return "save the photo again as PNG or JPEG" if what == "photo" else "save the mask again as PNG"


def _save_again_in_an_editor(what: Subject) -> str:
    """What to do with a damaged file an image editor reads: save it again, a mask as PNG (an editor
    keeps a file's format, and a JPEG is no mask; "save the mask again" did not say which)."""
    return f"save the {what} again{'' if what == 'photo' else ' as PNG'} with an image editor"


def _refuse_undecodable_tiff(data: bytes, what: Subject) -> None:
    """``ImageRejected('format_not_allowed')`` for a TIFF whose first page is stored with a compression
    Pillow has no decoder for (``_no_decoder``), or is another page's transparency mask as the TIFF
    standard writes one (PhotometricInterpretation 4, which Pillow has no mode for); nothing for other
    bytes. Pillow cannot open such a file at all, so it was refused as no image, though it is a TIFF
    that only needs saving again (``what`` the file is, which the advice names). The mask is not read
    as the photo's transparency: Pillow cannot read it, the standard lets it differ from the photo in
    size, and whose mask it is goes unsaid; after the photo page it is passed over, as most readers do."""
    layout = _TIFF_LAYOUTS.get(data[:4])
    if layout is None:
        return
    order, offset_format, _ = layout
    offset_at, offset_size = (8 if offset_format == "Q" else 4), struct.calcsize(offset_format)
    try:
        directory = TiffImagePlugin.ImageFileDirectory_v2(data[: offset_at + offset_size])
        (first,) = struct.unpack_from(order + offset_format, data, offset_at)
        fp = io.BytesIO(data)
        fp.seek(first)
        directory.load(fp)
    except _UNREADABLE_TIFF_PAGE:
        return
    if (no_decoder := _no_decoder(directory, what)) is not None:
        raise ImageRejected("format_not_allowed", f"TIFF page 0 is unreadable: {no_decoder}")
    if directory.get(262) == _TIFF_MASK_PHOTOMETRIC:
        raise ImageRejected(
            "format_not_allowed",
            "TIFF page 0 is a transparency mask of another page (PhotometricInterpretation 4), which this "
            f"reader cannot read past; {_save_again(what)}",
        )


def _full_size_pages(tiff: TiffImagePlugin.TiffImageFile) -> int:
    """A TIFF's pages less those that belong to another page (``_belongs_to_another_page``), up to
    one whose directory cannot be read: a photo whose last page points past the end of the file
    decodes, and counting its pages raised (``n_frames``: TypeError) and stopped ingest. Only the
    pages' directories are read, no pixels."""
    pages = 0
    for index in itertools.count():
        try:
            _seek_page(tiff, index)
        except (EOFError, *_UNREADABLE_TIFF_PAGE):
            return pages
        pages += not _belongs_to_another_page(tiff)
    return pages


def _seek_page(tiff: TiffImagePlugin.TiffImageFile, index: int) -> None:
    """Make page ``index`` the TIFF's current page; ``ImageRejected('too_many_pages')`` when it is past
    ``MAX_TIFF_PAGES``, before Pillow walks further (no setting raises the cap: no product photo needs it)."""
    tiff.seek(index)
    if index >= MAX_TIFF_PAGES:
        raise _too_many_pages()


def _too_many_pages() -> ImageRejected:
    """The refusal of a TIFF of more than ``MAX_TIFF_PAGES`` pages."""
    return ImageRejected(
        "too_many_pages",
        f"TIFF has more than {MAX_TIFF_PAGES} pages (a product photo's has a handful): save its page alone",
    )


def _belongs_to_another_page(tiff: TiffImagePlugin.TiffImageFile) -> bool:
    """Whether the current page's NewSubfileType says it belongs to another page: a reduced-size copy
    (bit 0, the preview scanners and cameras write after the photo) or a transparency mask (bit 2, a
    cut-out saved beside the photo)."""
    new_subfile_type = tiff.tag_v2.get(254, 0)
    return isinstance(new_subfile_type, int) and bool(new_subfile_type & (_TIFF_REDUCED | _TIFF_MASK))


def _as_rgba(image: Image.Image) -> Image.Image:
    """An image with alpha as ``RGBA``. Pillow has no La (premultiplied grey + alpha, a TIFF whose
    ExtraSamples is 1) to RGBA conversion: it goes through LA. Raises ``ImageRejected`` for a mode
    Pillow cannot convert."""
    if image.mode == "RGBA":
        return image  # converting would only copy it
    try:
        if image.mode == "La":
            image = image.convert("LA")
        return image.convert("RGBA")
    except (ValueError, OSError) as exc:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {image.mode} to RGBA") from exc


def transparency_mask(image: Image.Image, data: bytes = b"") -> UInt8Array | None:
    """The opaque pixels (255; the rest 0, HxW) of an image that has transparency: an alpha channel,
    a palette with a transparent entry, or a PNG colour key. A product cut-out's alpha is its exact
    outline, which a matting model only estimates (a white product on the white it would be
    composited over loses its edges). None when no pixel is transparent, or every pixel is.
    ``data`` is the file the image was decoded from (a colour key is in its bit depth)."""
    alpha = _alpha(image, data)
    if alpha is None:
        return None
    opaque = alpha >= 128
    if opaque.all() or not opaque.any():
        return None
    return np.where(opaque, np.uint8(255), np.uint8(0)).astype(np.uint8)


def _alpha(image: Image.Image, data: bytes) -> npt.NDArray[Any] | None:
    """The image's alpha (HxW): its alpha channel, a palette's transparent entry or a PNG colour key;
    None when it has no transparency at all."""
    keyed = _colour_key_alpha(image, data)
    if keyed is not None:
        return keyed
    if image.mode in ("LA", "La", "RGBA", "RGBa"):
        # The alpha band (the last; "a" where premultiplied) as it is: converting to RGBA would not
        # change it, only copy the colours.
        return pixel_array(image.getchannel(len(image.getbands()) - 1))
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return pixel_array(_as_rgba(image).getchannel("A"))
    return None


def _every_pixel_transparent(image: Image.Image, data: bytes) -> bool:
    alpha = _alpha(image, data)
    return alpha is not None and not bool((alpha >= 128).any())


def encode_png(image: Image.Image | npt.NDArray[Any]) -> bytes:
    """Encode pixels as PNG bytes that depend only on the pixels.

    No metadata (EXIF, ICC, text, time, dpi) is written and the compression level is fixed,
    so the same pixels always give the same bytes. Arrays must be ``uint8`` (or ``bool``,
    stored as 0/255) shaped HxW, HxWx3 or HxWx4. Raises ``ValueError`` for anything PNG
    cannot hold.
    """
    clean = _array_to_image(image) if isinstance(image, np.ndarray) else _strip_metadata(image)
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def _open_and_load(
    data: bytes,
    *,
    max_pixels: int,
    max_bytes: int,
    allowed_formats: Sequence[str],
    scale_jpeg: bool = False,
    what: Subject = "photo",
) -> Image.Image:
    """Run every refusal in order (cheap header checks before any pixel is decoded) and load frame 0.

    With ``scale_jpeg``, a JPEG with too many pixels is decoded scaled down to fit instead of refused.
    A JPEG whose last scan runs to the end of the file, with no end marker (EOI) after it, is decoded
    again closed with one: some cameras and uploaders leave it off a whole photo, and Pillow refuses
    it as truncated. It is kept when the cut-JPEG check, which then decodes it again whatever its last
    pixel, finds every scan whole; a file cut short is refused as it was. ``what`` the file is: the
    advice of a refusal names it.
    """
    load = functools.partial(
        _open_and_load_file,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        allowed_formats=allowed_formats,
        scale_jpeg=scale_jpeg,
        what=what,
    )
    try:
        return load(data)
    except ImageRejected as exc:
        if exc.reason != "truncated" or not data.startswith(b"\xff\xd8") or _last_scan_end(data) is not None:
            raise
        try:
            return load(data + b"\xff\xd9", closed=True)
        except ImageRejected:
            raise exc from None


def _open_and_load_file(
    data: bytes,
    *,
    max_pixels: int,
    max_bytes: int,
    allowed_formats: Sequence[str],
    scale_jpeg: bool,
    what: Subject,
    closed: bool = False,
) -> Image.Image:
    """``_open_and_load`` of the file as it is; ``closed``: a JPEG whose end marker was put after it."""
    if not data:
        raise ImageRejected("empty", "zero bytes")
    refuse_oversized(len(data), max_bytes)
    try:
        # Image.open reads only the header; pixels are decoded by load() below.
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        opened = _jpeg_past_pillows_limit(data) if scale_jpeg else None
        if opened is None:
            raise past_pillows_limit(exc) from exc
        image = opened
    except UnidentifiedImageError as exc:
        if _png_declares_zero_size(data):
            raise ImageRejected("zero_size", "PNG header declares a zero width or height") from exc
        if (zero_size := _jpeg_zero_size(data, what)) is not None:
            raise ImageRejected("zero_size", zero_size) from exc
        _refuse_heif(data, what)
        _refuse_cut_short(data)
        _refuse_undecodable_tiff(data, what)
        raise ImageRejected("not_an_image", "bytes are not in any known image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        _refuse_cut_short(data)
        raise ImageRejected("corrupt", f"unreadable image header: {exc}") from exc

    image_format = _FORMAT_ALIASES.get(image.format or "", image.format or "")
    allowed = {name.upper() for name in allowed_formats}
    if image_format not in allowed:
        _refuse_heif(data, what)
        # Said what would be read: "format GIF is not one of [...]" left its owner to guess.
        export = "export it as JPEG or PNG" if what == "photo" else "export it as PNG"
        raise ImageRejected(
            "format_not_allowed",
            f"format {image.format or 'unknown'} is not one of {sorted(allowed)}: {export}",
        )

    if image_format == "TIFF":
        seek_photo_page(image, what)
        _refuse_misread_tiff(image)
        refuse_misplaced_tiff_pixels(image, data, what)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("zero_size", f"image is {width}x{height}")
    limit = _pixel_limit(max_pixels)
    if width * height > limit:
        problem = _scale_jpeg_to_fit(image, data, limit) if scale_jpeg else ""
        if problem is not None:
            raise _too_many_pixels(width, height, max_pixels, problem)

    try:
        image.load()
    except Image.DecompressionBombError as exc:
        # A picture whose size only its loading reads (an icon's PNG, for a caller that allows ICNS).
        raise past_pillows_limit(exc) from exc
    except EOFError as exc:
        raise ImageRejected("truncated", f"pixel data ends early: {exc}") from exc
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error) as exc:
        _refuse_cut_short(data)
        if "truncated" in str(exc).lower():
            raise ImageRejected("truncated", f"{image_format} pixel data: {exc}") from exc
        undecodable = _undecodable_tiff_pixels(image, what, exc)
        raise ImageRejected("corrupt", undecodable or f"{image_format} pixel data: {exc}") from exc

    if image_format == "JPEG":
        _refuse_cut_jpeg(image, data, every_block=closed)
    if image_format == "BMP":
        image = _without_unused_bmp_alpha(image)
    return apply_exif_orientation(image)


# Any marker but RST0..7 (and a stuffed 0x00, or a fill 0xFF): what ends a scan's entropy-coded data.
_SCAN_END = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
# The start-of-frame markers (SOF0..SOF15 but DHT, JPG and DAC, which share their numbers).
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Those of the DCT frames libjpeg decodes: baseline, extended and progressive, Huffman or arithmetic coded.
_DCT_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})
# Of those, the progressive ones and the arithmetic-coded ones.
_PROGRESSIVE_FRAMES = frozenset({0xC2, 0xCA})
_ARITHMETIC_FRAMES = frozenset({0xC9, 0xCA})
# What the cut-JPEG check puts before the marker that ends the last scan (``_refuse_cut_jpeg``). An
# arithmetic-coded scan's decoder reads on past its data by design, zeros once it meets the marker,
# and its encoder drops its final zero bytes (up to about 24 on a 24 MP photo mostly white): zeros
# first, so a whole scan decodes the same.
_FILLER = b"\xa5" * 64
_ARITHMETIC_FILLER = b"\x00" * 64 + _FILLER


def _refuse_cut_jpeg(image: Image.Image, data: bytes, *, every_block: bool = False) -> None:
    """``ImageRejected('truncated')`` for a JPEG whose last scan ends before its pixels do; ``image``
    is what was decoded from ``data`` (scaled down when it had too many pixels). ``every_block``, for
    an end marker we put there: a one-pass JPEG is decoded again whatever its last pixel (below), and
    decoded again at its own size.

    A file cut mid-scan and then closed with an end marker (EOI) loads without an error: libjpeg only
    warns, which Pillow drops, and fills the missing blocks (flat grey in a baseline JPEG). Told apart
    by decoding it again (at 1/4 scale, cheaper) with filler bytes put before the marker that ends
    the last scan: a whole scan never reads them, a cut one decodes them into its missing blocks
    (0xA5, not zeros: zero bits often decode to the very grey fill; in an arithmetic-coded file after
    64 zero bytes, which a whole scan may read, so a cut whose missing blocks decode from those
    zeros, as flat as the rest, is not told apart either).
    A cut that libjpeg resyncs past the filler at (on a restart marker) is told by the markers first
    (``_missing_scan_data``), as is a progressive file cut where a scan starts. A one-pass JPEG is
    decoded again only when its last pixel is that grey, which it is whenever a whole block is
    missing: most photos cost nothing. So a cut inside the last MCU (the scan's last few dozen bytes:
    its last 16x16 pixels at 4:2:0 decoded from made-up bits), once closed, is not told apart: that
    would decode every JPEG twice more (about half its decode time again at 12 MP); nor is a cut in
    a progressive file's last few bytes (the finest refinement bits of its last blocks), unread at
    1/4 scale. A file that came without its end marker (``every_block``) is checked whole.
    """
    missing = _missing_scan_data(data, ended=not every_block)
    if missing is not None:
        raise ImageRejected("truncated", f"JPEG pixel data ends early: {missing}")
    width, height = image.size
    corner = image.getpixel((width - 1, height - 1))
    # 127: an Adobe CMYK JPEG stores its inks inverted.
    grey = {*(corner if isinstance(corner, tuple) else (corner,))} <= {127, 128}
    if not every_block and not grey and _jpeg_decodes_in_one_pass(data):
        return
    end = _last_scan_end(data)
    if end is None:
        return
    arithmetic = any(marker in _ARITHMETIC_FRAMES for marker, *_ in _jpeg_segments(data))
    filled = data[:end] + (_ARITHMETIC_FILLER if arithmetic else _FILLER) + data[end:]
    whole: Image.Image | None
    if every_block:
        # At the size it was decoded, the image is the whole file's decode: one decode more, not two.
        whole, again = image, _jpeg_reduced(filled, image.size)
    else:
        reduced = (max(1, width // 4), max(1, height // 4))
        whole, again = _jpeg_reduced(data, reduced), _jpeg_reduced(filled, reduced)
    if not _same_pixels(whole, again):
        raise ImageRejected("truncated", "JPEG pixel data ends early: its last scan is cut short")


def _same_pixels(image: Image.Image | None, other: Image.Image | None) -> bool:
    """Whether two decodes (None: one that failed) gave the same pixels; compared in C, not as bytes."""
    if image is None or other is None:
        return image is other
    if (image.mode, image.size) != (other.mode, other.size):
        return False
    return ImageChops.difference(image, other).getbbox() is None


def _last_scan_end(data: bytes) -> int | None:
    """Where the entropy-coded data of the first image's last scan ends (the marker after it); None
    when the marker segments cannot be walked to a scan, or its end marker is missing."""
    ends = [end for marker, _, _, end in _jpeg_segments(data) if marker == 0xDA]
    return ends[-1] if ends and ends[-1] < len(data) else None


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    """The first image's marker segments up to its end marker (EOI): each marker, its payload, and
    where the data after its payload starts and ends: a scan's (SOS) entropy-coded data runs to the
    next marker (the file's end when there is none, and the walk stops); other segments have none.
    Bytes that are no marker between segments are skipped, as libjpeg and Pillow skip them (libjpeg
    warns of "extraneous bytes"): stopped there, the walk saw no scan in a photo they decode whole."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            position = data.find(b"\xff", position)
            if position < 0:
                return
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte
            position += 1
            continue
        if marker == 0x00:  # a stuffed FF 00 outside a scan is no marker: extraneous, as libjpeg reads it
            position += 2
            continue
        if marker == 0xD9:  # EOI: the first image ends (an MPO's next one may follow)
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        payload = data[position + 4 : position + 2 + length]
        start = position = position + 2 + length
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            found = _SCAN_END.search(data, position)
            position = len(data) if found is None else found.start()
        yield marker, payload, start, position


def _missing_scan_data(data: bytes, *, ended: bool) -> str | None:
    """What the first image's scans lack, told from their markers alone; None when nothing is (or the
    markers cannot be walked). ``ended``: the file has its own end marker (EOI), not one we put there.

    A scan with restart markers (RSTn) has one between every ``restart interval`` blocks, so fewer than
    its blocks need is a cut, wherever it is: the filler decode of ``_refuse_cut_jpeg`` misses a cut
    made on a marker (libjpeg resyncs past the filler). And every coefficient of every colour must be
    sent to its last bit: a progressive file cut where a scan starts shows the coarser picture the
    earlier scans made, without a warning. Only its last bit may be missing from a file that ends with
    its end marker: an encoder may leave out the final refinement scans (its scan script is its own),
    and the picture is whole, each coefficient at most one step off, as at a lower quality. Such a file
    and one cut where those scans start are the same bytes; told apart, a cut there would show as
    little.
    """
    frame: tuple[int, int, dict[int, tuple[int, int]]] | None = None
    progressive = False
    restart_interval = 0
    # The bit each coefficient (0..63) of each component was last sent to (0 is the last; 99: unsent).
    sent: dict[int, list[int]] = {}
    for marker, payload, start, end in _jpeg_segments(data):
        if marker in _JPEG_FRAMES:
            count = payload[5] if len(payload) >= 6 else 0
            if marker not in _DCT_FRAMES or len(payload) < 6 + 3 * count or not count:
                return None  # lossless or hierarchical (libjpeg refuses those), or malformed
            samplings = {payload[6 + 3 * i]: divmod(payload[7 + 3 * i], 16) for i in range(count)}
            if not all(h and v for h, v in samplings.values()):
                return None
            height, width = struct.unpack(">HH", payload[1:5])
            frame = (width, height, samplings)
            progressive = marker in _PROGRESSIVE_FRAMES
            sent = {component: [99] * 64 for component in samplings}
        elif marker == 0xDD and len(payload) >= 2:
            (restart_interval,) = struct.unpack(">H", payload[:2])
        elif marker == 0xDA and frame is not None:
            count = payload[0] if payload else 0
            components = [payload[1 + 2 * i] for i in range(count)] if len(payload) >= 4 + 2 * count else []
            if not components or not set(components) <= sent.keys():
                return None
            # A sequential scan sends every coefficient whole whatever its Ss, Se and Al say: some
            # baseline encoders write zeros there, and libjpeg only warns.
            first, last, bits = payload[1 + 2 * count : 4 + 2 * count] if progressive else (0, 63, 0)
            if restart_interval and end < len(data):
                needed = -(-_scan_mcus(*frame, components) // restart_interval) - 1
                restarts = len(_RESTART.findall(data, start, end))
                if restarts < needed:
                    return f"a scan has {restarts} restart markers where its blocks need {needed}"
            for component in components:
                coefficients = sent[component]
                for index in range(first, min(last, 63) + 1):
                    coefficients[index] = bits & 0x0F
    if frame is None:
        return None
    coarsest = max(max(coefficients) for coefficients in sent.values())
    if coarsest > 1 or (coarsest and not ended):
        return "scans are missing: not every coefficient of every colour was sent"
    return None


def _scan_mcus(width: int, height: int, samplings: dict[int, tuple[int, int]], components: list[int]) -> int:
    """How many MCUs (what a restart interval counts) a scan of ``components`` codes, in a frame of
    ``width`` x ``height`` whose components are sampled ``samplings`` (id: horizontal, vertical): one
    per block of a lone component (its own size), one per largest sampling's blocks when interleaved."""
    h_max = max(h for h, _ in samplings.values())
    v_max = max(v for _, v in samplings.values())
    if len(components) > 1:
        return -(-width // (8 * h_max)) * -(-height // (8 * v_max))
    h, v = samplings[components[0]]
    columns, rows = -(-width * h // h_max), -(-height * v // v_max)  # the component's own size
    return -(-columns // 8) * -(-rows // 8)


def _jpeg_reduced(data: bytes, size: tuple[int, int]) -> Image.Image | None:
    """The JPEG's pixels decoded at the smallest scale at least ``size``, 1/8 at the least (which keeps
    only each block's DC, whole in a cut progressive file: asked for 1/4 of what was decoded); None
    when they cannot be decoded."""
    try:
        image = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        image.draft(image.mode, size)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        return None
    return image


def _without_unused_bmp_alpha(image: Image.Image) -> Image.Image:
    """A 32-bit BMP whose fourth byte Pillow reads as alpha, as ``RGB`` when every alpha byte is 0.

    Windows writes 0 there for "unused" (its own viewers, Chrome and Firefox then show the image
    opaque); read as alpha, the photo was a plain white picture, refused as ``blank_photo``."""
    if image.mode != "RGBA" or image.getextrema()[3] != (0, 0):
        return image
    return image.convert("RGB")


def _jpeg_past_pillows_limit(data: bytes) -> Image.Image | None:
    """A JPEG whose header Image.open refused as a decompression bomb, opened (its header only) so
    that it can be decoded scaled down to fit (``_scale_jpeg_to_fit``, which still refuses it when it
    cannot be): Pillow checks the size at open, before ``draft`` can be asked for, and a 200 MP phone
    photo is past twice ``PIL.Image.MAX_IMAGE_PIXELS`` though 1/4 of it fits. None for anything else.
    The plugin's own constructor reads the header without that check; nothing is decoded here."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        return None


def _refuse_misread_tiff(image: Image.Image) -> None:
    """TIFF layouts Pillow decodes wrongly without an error: more than 8 bits per sample stored per
    channel (planar) and uncompressed, which Pillow reads as 8-bit planes (a zoomed, recoloured
    quarter of the picture was stored as the product's photo), and more than 8 bits with 0 = white
    (stored as its negative). Refused with what to do instead."""
    tags = getattr(image, "tag_v2", {})
    bits = tags.get(258, 8)
    deepest = max(bits) if isinstance(bits, tuple) else int(bits)
    if deepest <= 8:
        return
    if tags.get(284, 1) == 2 and tags.get(259, 1) == 1:
        raise ImageRejected(
            "unsupported_mode",
            f"an uncompressed TIFF of {deepest} bits per sample stored per channel (planar) is not read "
            "correctly; save it interleaved (RGBRGB...) or compressed (LZW / ZIP), or as PNG",
        )
    if tags.get(262) == 0:
        raise ImageRejected(
            "unsupported_mode",
            f"a TIFF of {deepest} bits per sample with 0 = white (MinIsWhite) is not read correctly; "
            "save it as an ordinary greyscale TIFF or PNG",
        )


def refuse_misplaced_tiff_pixels(image: Image.Image, data: bytes, what: Subject = "photo") -> None:
    """``ImageRejected`` for an uncompressed TIFF whose pixels are placed where no byte of ``data`` is:
    a StripOffsets (or TileOffsets) whose field type makes it no position at all (a RATIONAL, a text:
    a damaged directory entry; ``corrupt``), or a position past the file's end (``truncated``). Pillow's
    reader of uncompressed strips raised TypeError for the one and, past 2**63, OverflowError for the
    other, out of ``decode_image`` (found by fuzzing). libtiff places compressed pages itself. Asked
    of an opened page before its pixels are loaded (``decode_image``; the copy check's grey thumbnail);
    ``what`` the file is, which the advice names."""
    if not isinstance(image, TiffImagePlugin.TiffImageFile):
        return
    tag, name = (324, "TileOffsets") if 324 in image.tag_v2 else (273, "StripOffsets")
    for tile in image.tile or ():
        offset = tile[2]
        if not isinstance(offset, int):
            field_type = TiffTags.TYPES.get(image.tag_v2.tagtype.get(tag, 0), "unknown").upper()
            raise ImageRejected(
                "corrupt",
                f"the TIFF's {name} has field type {field_type} ({offset!r}), which is no position in "
                f"the file: its directory is damaged; {_save_again_in_an_editor(what)}",
            )
        if offset > len(data):
            raise ImageRejected(
                "truncated", f"the TIFF's pixels lie at byte {offset}, past the file's end: {len(data)} bytes"
            )


def _pixel_limit(max_pixels: int) -> int:
    """Our limit, tightened to Pillow's bomb-warning threshold so that warning is always a refusal.

    Reading the threshold instead of turning the warning into an error with
    ``warnings.catch_warnings`` keeps this safe in threaded services (that context manager
    mutates process-wide state).
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, int(pillow_limit))


def past_pillows_limit(bomb: Image.DecompressionBombError) -> ImageRejected:
    """The ``too_many_pixels`` refusal of an image ``Image.open`` or its loading raised ``bomb`` for
    (past twice Pillow's limit): Pillow's words, and that no setting passes it. Pillow's words alone did
    not say so."""
    return ImageRejected(
        "too_many_pixels",
        f"{bomb} That is Pillow's own decompression-bomb limit (twice PIL.Image.MAX_IMAGE_PIXELS); "
        f"{PAST_PILLOWS_LIMIT}",
    )


def _too_many_pixels(width: int, height: int, max_pixels: int, problem: str) -> ImageRejected:
    """The ``too_many_pixels`` refusal: the size, the limit, which setting (ours or Pillow's) it is, and
    ``problem``, why it was not decoded scaled down (empty: scaling was not asked for). Past Pillow's
    limit it says no setting passes the image (``PAST_PILLOWS_LIMIT``) and names no ``setting``:
    ``_pixel_limit`` caps ours at Pillow's, so a higher SKUFORGE_MAX_IMAGE_PIXELS still refuses it (it
    said "SKUFORGE_MAX_IMAGE_PIXELS sets it" where ours was at or below Pillow's)."""
    pixels = width * height
    pillow_limit = Image.MAX_IMAGE_PIXELS
    setting = None
    if pillow_limit is not None and pixels > pillow_limit:
        limit = (
            f"the limit is {_pixel_limit(max_pixels)}: past Pillow's own decompression-bomb limit of "
            f"{int(pillow_limit)} pixels (PIL.Image.MAX_IMAGE_PIXELS); {PAST_PILLOWS_LIMIT}"
        )
    else:
        setting = "SKUFORGE_MAX_IMAGE_PIXELS"
        limit = f"the limit is {max_pixels} ({setting} sets it)"
    scaled = f"; not decoded scaled down: {problem}" if problem else ""
    return ImageRejected(
        "too_many_pixels", f"{width}x{height} = {pixels} pixels; {limit}{scaled}", setting=setting
    )


def _scale_jpeg_to_fit(image: Image.Image, data: bytes, limit: int) -> str | None:
    """Make ``image`` (opened, not loaded) decode at the largest of 1/2, 1/4, 1/8 scale with at most
    ``limit`` pixels; None when done, else why it cannot be.

    libjpeg scales while it decodes, so the full size is never allocated: a file whose header claims
    a huge size allocates no more than the limit, and fails as truncated if its data is not there.
    That holds only where libjpeg decodes in one pass, holding a strip of rows; for a progressive
    JPEG (or one scan per colour) it keeps every coefficient of the full frame in memory whatever the
    scale, so such a file stays refused.
    """
    if not isinstance(image, JpegImagePlugin.JpegImageFile):
        return "its format is not JPEG"
    if not _jpeg_decodes_in_one_pass(data):
        return "a progressive JPEG is decoded at its full size (save it as baseline JPEG, or smaller)"
    width, height = image.size
    for scale in _JPEG_SCALES:
        if -(-width // scale) * -(-height // scale) <= limit:
            # draft picks the largest scale at which the image is still at least the size asked for.
            image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            if image.size[0] * image.size[1] <= limit:
                return None
            break
    return "even at 1/8 of its size it has too many pixels"


def file_size_px(data: bytes, decoded_size: tuple[int, int]) -> tuple[int, int]:
    """The size of the photo file ``data`` as its owner sees it in the file's properties, where it was
    decoded scaled down to ``decoded_size`` (a JPEG over the pixel limit: ``_scale_jpeg_to_fit``),
    turned as the decoded picture is; else ``decoded_size``. A refusal that gave the decoded size named
    "2000x55 px" for a 4000x110 file."""
    if not data.startswith(b"\xff\xd8"):
        return decoded_size
    try:
        width, height = JpegImagePlugin.JpegImageFile(io.BytesIO(data)).size  # the header only
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        return decoded_size
    for scale in _JPEG_SCALES:
        scaled = (-(-width // scale), -(-height // scale))
        if scaled == decoded_size:
            return width, height
        if scaled[::-1] == decoded_size:  # turned on its side by its EXIF orientation
            return height, width
    return decoded_size


def _jpeg_decodes_in_one_pass(data: bytes) -> bool:
    """True when ``data`` is a sequential (baseline or extended, Huffman-coded) JPEG whose first scan
    carries every colour component: libjpeg then decodes it in one pass."""
    if not data.startswith(b"\xff\xd8"):
        return False
    components = None
    for marker, payload, _, _ in _jpeg_segments(data):
        if marker in (0xC0, 0xC1):  # SOF0 baseline, SOF1 extended sequential
            if len(payload) < 6:
                return False
            components = payload[5]
        elif marker in _JPEG_FRAMES:  # any other frame type
            return False
        elif marker == 0xDA:  # the first scan
            return components is not None and len(payload) >= 1 and payload[0] == components
    return False


def _ftyp_brands(data: bytes) -> set[bytes]:
    """The brands (major and compatible) of the ISO-BMFF ``ftyp`` box ``data`` opens with; none for
    other bytes."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        return set()
    (box_size,) = struct.unpack(">I", data[:4])
    compatible = data[16 : min(box_size, len(data), 256)]
    return {data[8:12], *(compatible[index : index + 4] for index in range(0, len(compatible) - 3, 4))}


def _refuse_heif(data: bytes, what: Subject) -> None:
    """``ImageRejected('format_not_allowed')`` naming HEIC/HEIF when ``data`` opens with such an
    ISO-BMFF ``ftyp`` box (by its major or a compatible brand); nothing for other bytes. A mask is told
    PNG: an iPhone's edited mask is HEIC, and "export the photo as JPEG or PNG" led to a JPEG mask,
    refused in turn."""
    if _ftyp_brands(data) & _HEIF_BRANDS:
        export = "export the photo as JPEG or PNG" if what == "photo" else "export the mask as PNG"
        raise ImageRejected("format_not_allowed", f"HEIC/HEIF (or AVIF) is not supported: {export}")


def _refuse_cut_short(data: bytes) -> None:
    """``ImageRejected('truncated')`` for a TIFF or WebP file whose own header says it goes on past its
    last byte; nothing for other bytes. A WebP declares its length up front (RIFF), and a compressed
    TIFF keeps its directory (IFD: size, layout, where the pixels are) after the pixels: cut short,
    Pillow could not open the one (``corrupt``) nor even identify the other (``not_an_image``)."""
    if _declared_length(data) > len(data):
        raise ImageRejected("truncated", f"the file ends early: {len(data)} bytes, its header needs more")


def _declared_length(data: bytes) -> int:
    """The fewest bytes a WebP or TIFF file's header says it has (the RIFF length; the end of the
    first TIFF directory and of the values it points at); 0 for other bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        (riff_length,) = struct.unpack("<I", data[4:8])
        return 8 + riff_length
    layout = _TIFF_LAYOUTS.get(data[:4])
    if layout is None:
        return 0
    order, offset_format, count_format = layout
    offset_at = 8 if offset_format == "Q" else 4
    offset_size, count_size = struct.calcsize(offset_format), struct.calcsize(count_format)
    entry_size = 4 + 2 * offset_size  # tag, type, count and a value (or where it is)
    if len(data) < offset_at + offset_size:
        return offset_at + offset_size
    (directory,) = struct.unpack(order + offset_format, data[offset_at : offset_at + offset_size])
    if directory < offset_at + offset_size:  # inside the header: no TIFF
        return 0
    if len(data) < directory + count_size:
        return directory + count_size
    (entries,) = struct.unpack(order + count_format, data[directory : directory + count_size])
    first = directory + count_size
    needed = first + entries * entry_size + offset_size  # the entries, then the next directory's offset
    if len(data) < needed:
        return needed
    for at in range(first, first + entries * entry_size, entry_size):
        kind, count = struct.unpack(order + "H" + offset_format, data[at + 2 : at + 4 + offset_size])
        size = count * _TIFF_TYPE_SIZES.get(kind, 1)
        if size > offset_size:  # the value is elsewhere, where its field says
            (value_at,) = struct.unpack(order + offset_format, data[at + 4 + offset_size : at + entry_size])
            needed = max(needed, value_at + size)
    return needed


def _png_declares_zero_size(data: bytes) -> bool:
    """Pillow refuses zero-sized PNGs as unidentifiable; read IHDR ourselves to give the real reason."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width == 0 or height == 0


def _jpeg_zero_size(data: bytes, what: Subject) -> str | None:
    """Why a JPEG (a ``what``) whose frame header declares a zero width or height is refused; None for
    other bytes.
    Pillow refuses such a file as unidentifiable. Height 0 is the JPEG standard's way of giving the
    height after the first scan (a DNL marker, written by some scanners), which neither Pillow nor
    libjpeg reads: named, so the user re-saves the photo rather than hunting for a wrong format."""
    if not data.startswith(b"\xff\xd8"):
        return None
    for marker, payload, _, _ in _jpeg_segments(data):
        if marker in _JPEG_FRAMES and len(payload) >= 5:
            height, width = struct.unpack(">HH", payload[1:5])
            if width and not height:
                return (
                    f"JPEG header declares {width}x0: its height comes after the first scan (a DNL "
                    f"marker), which the decoder cannot read; {_save_again_in_an_editor(what)}"
                )
            return None if width else f"JPEG header declares a zero width ({width}x{height})"
    return None


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation says.

    Malformed EXIF only loses the orientation hint: the pixels themselves decoded fine, and
    refusing a good photo over a broken metadata block would lose more than it protects. An
    orientation Pillow does not reach, as it stops at a tag whose data is cut short, is read from its
    own entry (``_orientation_entry``).
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        if orientation is None:
            raw = image.info.get("exif")
            orientation = _orientation_entry(raw) if isinstance(raw, bytes) else None
            if orientation in _EXIF_TRANSPOSES:
                turned = image.transpose(_EXIF_TRANSPOSES[orientation])
                # Its copy of the block still says it; read again, it would be turned twice.
                turned.info.pop("exif", None)
                return turned
        if orientation in (None, 1):
            # exif_transpose would copy the whole image even when there is nothing to do.
            return image
        transposed = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return image
    return image if transposed is None else transposed


# How each EXIF orientation but 1 (as stored) is shown, as ImageOps.exif_transpose turns it.
_EXIF_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation_entry(exif: bytes) -> int | None:
    """The Orientation in the first directory of an EXIF block, read from its entry alone; None when
    there is none or the entry itself is cut off.

    Pillow reads a directory's tags in order and drops the rest at the first whose data lies past the
    block's end (an editing app that cut the block short): Orientation (274) comes after Make and
    Model (271, 272), whose text is stored at the end, so a phone's portrait photo was taken as it
    lies, on its side. Orientation's value is in its entry, which is whole."""
    tiff = exif.removeprefix(b"Exif\x00\x00")
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if order is None:
        return None
    try:
        (directory,) = struct.unpack_from(order + "I", tiff, 4)
        (entries,) = struct.unpack_from(order + "H", tiff, directory)
        for entry in range(directory + 2, directory + 2 + 12 * entries, 12):
            tag, kind, count, value = struct.unpack_from(order + "HHIH", tiff, entry)
            if tag == ExifTags.Base.Orientation:
                return value if kind == 3 and count == 1 else None  # one SHORT, as EXIF defines it
    except struct.error:  # the entries are cut off before it
        return None
    return None


def _to_rgb(image: Image.Image, data: bytes) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB; an ICC profile is applied (``_to_srgb``) and alpha is
    composited over white. ``data`` is the file."""
    keyed = _colour_key_alpha(image, data)
    if keyed is not None:
        return Image.fromarray(
            _composited(_to_rgb(_without_colour_key(image), data), background=255, alpha=keyed)
        )
    image = _to_srgb(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(image)).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in _ALPHA_MODES:
        return Image.fromarray(_composited(_as_rgba(image), background=255))
    try:
        # "1", "L", "CMYK", "YCbCr", "LAB", "HSV" and friends: Pillow's own conversions.
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {mode} to RGB") from exc


def _to_srgb(image: Image.Image) -> Image.Image:
    """``image`` converted to sRGB by its embedded ICC profile; as it is when it has none, when the
    profile is sRGB already, or when the profile cannot be read or applied.

    The pixels of a Display P3 or Adobe RGB photo mean other colours than the same numbers in sRGB
    (up to 63 levels apart), and the profile is gone once the photo is stored as PNG. A broken or
    mismatched profile only loses that correction: the pixels decoded fine, as with broken EXIF.
    A palette image is expanded first, 16- and 32-bit grey rescaled to 8 bits (``_scale_to_uint8``);
    alpha is carried through.
    """
    profile = image.info.get("icc_profile")
    if not profile or not isinstance(profile, bytes):
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La"):
        return _grey_and_alpha_to_srgb(image, profile)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        # Rescaled to 8 bits as without a profile, then converted as an 8-bit grey photo is: lcms
        # reads Pillow's 32-bit modes as other numbers.
        image = Image.fromarray(_scale_to_uint8(image))
        image.info["icc_profile"] = profile
    if image.mode not in _ICC_MODES:
        return image
    colour_space, output_mode = _ICC_MODES[image.mode]
    try:
        if _profile_is_srgb(profile, colour_space):
            return image
        converted = ImageCms.profileToProfile(
            image, ImageCms.ImageCmsProfile(io.BytesIO(profile)), _srgb_profile(), outputMode=output_mode
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.debug("embedded ICC profile ignored: %s", exc)
        return image
    assert converted is not None  # profileToProfile returns None only with inPlace=True
    return converted


def _grey_and_alpha_to_srgb(image: Image.Image, profile: bytes) -> Image.Image:
    """A grey + alpha image (``LA``, premultiplied ``La``) as ``RGBA`` in sRGB: its grey converted by
    the grey ``profile`` as an ``L`` photo's is, its alpha untouched; as it is when the profile cannot
    be applied. lcms has no grey + alpha layout that Pillow hands it correctly, so the bands go apart."""
    grey_and_alpha = image.convert("LA") if image.mode == "La" else image
    grey = grey_and_alpha.getchannel("L")
    grey.info["icc_profile"] = profile
    converted = _to_srgb(grey)
    if converted.mode != "RGB":
        return image
    converted.putalpha(grey_and_alpha.getchannel("A"))
    return converted


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=32)
def _profile_is_srgb(profile: bytes, colour_space: str) -> bool:
    """Whether the ICC ``profile`` maps every colour to itself in sRGB, to within one level: many
    cameras and phones embed an sRGB profile, and converting through it would only move some pixels by
    rounding (and the photo's id with them). Raises ``ImageCms.PyCMSError`` (or ``ValueError``) for
    a profile that cannot be read or is not of ``colour_space`` (``RGB``, ``CMYK`` or ``GRAY``)."""
    read = ImageCms.core.profile_frombytes(profile)
    found = read.xcolor_space.strip()
    if found != colour_space:
        raise ValueError(f"a {found} profile on {colour_space} pixels")
    if colour_space != "RGB":
        return False
    levels = np.linspace(0, 255, 16).round().astype(np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(1, -1, 3)
    opened = ImageCms.ImageCmsProfile(read)
    mapped = ImageCms.profileToProfile(Image.fromarray(cube), opened, _srgb_profile(), outputMode="RGB")
    assert mapped is not None
    return int(np.abs(np.asarray(mapped, dtype=np.int16) - cube).max()) <= 1


def _to_gray8(image: Image.Image, data: bytes) -> UInt8Array:
    """Convert any decoded mode to an 8-bit HxW luminance array; alpha is composited over black.
    ``data`` is the file."""
    keyed = _colour_key_alpha(image, data)
    if keyed is not None:
        gray = Image.fromarray(_to_gray8(_without_colour_key(image), data))
        return _composited(gray, background=0, alpha=keyed)
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        # 8-bit values in a 16- or 32-bit file (an 8-bit mask saved as uint16 by OpenCV or numpy) are
        # read as they are: rescaled from 0..65535 its 255 is 1, and the whole mask read as background.
        return _scale_to_uint8(image)
    if mode == "RGB" and _png_bit_depth(data) == 16 and not any(high for _, high in image.getextrema()):
        # A 16-bit RGB PNG decodes to each sample's high byte; all 0 means 8-bit values in 16 bits
        # (an 8-bit mask saved as uint16 by OpenCV), which are the low bytes. Read high, it was empty.
        low = _png_rgb16_low_bytes(data, (image.height, image.width, 3))
        return pixel_array(Image.fromarray(low, "RGB").convert("L"))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = image.mode
    if mode in _ALPHA_MODES:
        return _composited(image.convert("LA"), background=0)
    if mode == "LAB":
        # A Lab mask (Photoshop's Lab mode, a CIELab TIFF): its lightness is the white-on-black drawn;
        # Pillow has no LAB to L conversion.
        return pixel_array(image.getchannel("L"))
    try:
        # An L image is read as it is: convert would copy it first.
        return pixel_array(image if mode == "L" else image.convert("L"))
    except (ValueError, OSError) as exc:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {mode} to a mask") from exc


def _colour_key_alpha(image: Image.Image, data: bytes) -> UInt8Array | None:
    """The alpha (0 or 255, HxW) of an image made transparent by a colour key, else None.

    A grayscale or RGB PNG may mark one colour transparent (tRNS) instead of carrying an alpha
    channel; optimisers write cut-outs that way. Pillow keeps the key in ``info``, not in the
    pixels, so without this those pixels would show their hidden colour (often black).
    Palette images are left to Pillow's own conversion, which already applies their key.
    The key is in the file's bit depth (``data``'s IHDR), which is not always the pixels' depth:
    Pillow scales 2- and 4-bit grayscale up to 8 bits and keeps only the high byte of 16-bit RGB.
    Compared a strip of rows at a time.
    """
    key = image.info.get("transparency")
    if key is None or image.mode not in ("1", "L", "RGB", "I", *_SIXTEEN_BIT_MODES):
        return None
    bit_depth = _png_bit_depth(data)
    transparent: Callable[[npt.NDArray[Any], int, int], npt.NDArray[np.bool_]]
    if image.mode == "RGB":
        if not (isinstance(key, tuple) and len(key) == 3 and all(isinstance(k, int) for k in key)):
            return None
        depth = bit_depth if bit_depth == 16 else 8
        if not all(0 <= k < 2**depth for k in key):
            return None  # a key no pixel can have: nothing is transparent
        rgb_key: tuple[int, int, int] = key
        if depth == 16:
            # The pixels hold each sample's high byte; matching that alone would also hide every
            # colour within 1/256 of the key, so the low bytes must match too.
            low = _png_rgb16_low_bytes(data, (image.height, image.width, 3))

            def transparent(values: npt.NDArray[Any], top: int, bottom: int) -> npt.NDArray[np.bool_]:
                hidden = np.ones(values.shape[:2], dtype=np.bool_)
                for channel, sample in enumerate(rgb_key):
                    hidden &= values[..., channel] == sample >> 8
                    hidden &= low[top:bottom, :, channel] == sample & 0xFF
                return hidden

        else:

            def transparent(values: npt.NDArray[Any], top: int, bottom: int) -> npt.NDArray[np.bool_]:
                red, green, blue = rgb_key
                return (values[..., 0] == red) & (values[..., 1] == green) & (values[..., 2] == blue)

    else:
        if not isinstance(key, int):
            return None
        if image.mode == "L" and bit_depth in (2, 4):
            if not 0 <= key < 2**bit_depth:
                return None  # a key no pixel can have: nothing is transparent
            # Pillow stretches 2- and 4-bit samples onto 0..255 by exact multiples (85, 17).
            key = key * 255 // (2**bit_depth - 1)
        scalar_key: int = key

        def transparent(values: npt.NDArray[Any], top: int, bottom: int) -> npt.NDArray[np.bool_]:
            # Mode "1" arrays are bool: the key 0/1 (or 0/255) compares as black/white.
            return np.asarray(values == (bool(scalar_key) if values.dtype == np.bool_ else scalar_key))

    return _converted(
        image,
        lambda values, top, bottom: np.where(transparent(values, top, bottom), np.uint8(0), np.uint8(255)),
    )


def _png_bit_depth(data: bytes) -> int | None:
    """The bit depth a PNG's IHDR declares; None for anything else."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 25 or data[12:16] != b"IHDR":
        return None
    return data[24]


def _png_rgb16_low_bytes(data: bytes, shape: tuple[int, ...]) -> UInt8Array:
    """The low byte of every sample (HxWx3) of a 16-bit RGB PNG, whose high bytes Pillow decoded.

    Decoding the file again with the little-endian unpacker of the same width unfilters the same
    bytes but keeps the other byte of each sample. ``shape`` is the decoded (oriented) pixels'.
    """
    try:
        again = Image.open(io.BytesIO(data))
        tiles = list(getattr(again, "tile", None) or ())
        # A tile is (codec, extents, offset, args): a named tuple since Pillow 11, a plain one before.
        if not isinstance(again, ImageFile.ImageFile) or len(tiles) != 1 or tiles[0][3] != "RGB;16B":
            # Refused rather than read by the high byte alone, which would hide near-key colours
            # (and read a 0/255 mask as empty).
            raise ImageRejected("unsupported_mode", "a 16-bit RGB PNG that cannot be read at full depth")
        tile = tiles[0]
        little_endian = (tile[0], tile[1], tile[2], "RGB;16L")
        again.tile = [tile._make(little_endian) if hasattr(tile, "_make") else little_endian]
        again.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageRejected("corrupt", f"PNG pixel data: {exc}") from exc
    low = pixel_array(apply_exif_orientation(again))
    if low.shape != shape:
        raise ImageRejected("corrupt", "PNG pixel data decodes to two different sizes")
    return low


def _without_colour_key(image: Image.Image) -> Image.Image:
    """The same pixels with the colour key dropped, so the usual conversions see opaque pixels."""
    opaque = image.copy()
    opaque.info.pop("transparency", None)
    return opaque


def _composite(
    color: npt.NDArray[np.uint16], alpha: npt.NDArray[np.uint16], *, background: int
) -> UInt8Array:
    """Blend 8-bit colour over a flat background by 8-bit alpha, rounding to nearest."""
    blended = (color * alpha + background * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _scale_to_uint8(image: Image.Image) -> UInt8Array:
    """Rescale high-bit-depth grayscale to 8 bits over its nominal range instead of clipping.

    16-bit modes are read as 8-bit values when they fit in 0..255 and map 0..65535 onto 0..255
    otherwise. Mode "I" (32-bit int) is read as 8-bit values when they fit in 0..255, treated as
    16-bit when they fit in 0..65535 (that is what Pillow and most TIFF/PNG writers put there) and
    is stretched over its actual range otherwise. Mode "F" (float) maps 0..1 onto 0..255, keeps
    values already in 0..255 and stretches anything else; NaN becomes 0.
    """
    if image.width == 0 or image.height == 0:
        return np.zeros((image.height, image.width), dtype=np.uint8)
    if image.mode in _SIXTEEN_BIT_MODES:
        if _extrema(image)[1] <= 255:
            # An 8-bit photo or mask saved as uint16 (numpy, OpenCV), as mode "I" below: read over
            # 0..65535 it was 0 and 1, a black photo stored without a word.
            return _converted(image, lambda values, _top, _bottom: values.astype(np.uint8))
        # Integer rounding, a strip at a time: the whole image as uint32 was 4 bytes a pixel, and
        # float64 would be 8.
        return _converted(
            image,
            lambda values, _top, _bottom: ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(
                np.uint8
            ),
        )

    # The range is found in one pass and the values mapped in a second, both a strip at a time: the
    # whole image as float64, cleaned and scaled, was about 30 bytes a pixel for a 1-byte result.
    def as_floats(values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        floats = values.astype(np.float64)
        return (
            np.nan_to_num(floats, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            if image.mode == "F"
            else floats
        )

    low, high = (float(extreme) for extreme in _extrema(image, as_floats))
    if image.mode == "I" and low >= 0.0 and high <= 255.0:
        # An 8-bit photo saved as int32 (numpy, OpenCV): read over 0..65535 it was 0 and 1, a black
        # photo stored without a word. No 16-bit photo has every value under 256.
        return _converted(image, lambda values, _top, _bottom: values.astype(np.uint8))
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    elif image.mode == "F" and low >= 0.0 and high <= 255.0:
        low, high = 0.0, 255.0
    elif image.mode != "F" and low >= 0.0 and high <= 65535.0:
        low, high = 0.0, 65535.0
    return _converted(image, lambda values, _top, _bottom: _scale_range(as_floats(values), low, high))


def _scale_range(values: npt.NDArray[np.float64], low: float, high: float) -> UInt8Array:
    """Map ``low..high`` linearly onto 0..255 with rounding; a flat range maps to 0."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.rint((values - low) * (255.0 / (high - low)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _array_to_image(array: npt.NDArray[Any]) -> Image.Image:
    """Wrap an HxW / HxWx3 / HxWx4 uint8 (or bool) array as an L / RGB / RGBA image."""
    if array.dtype == np.bool_:
        array = np.where(array, np.uint8(255), np.uint8(0)).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"cannot encode a {array.dtype} array as PNG; convert it to uint8 first")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"cannot encode an array of shape {array.shape} as PNG; expected HxW, HxWx3 or HxWx4"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def _strip_metadata(image: Image.Image) -> Image.Image:
    """Copy the pixels without the metadata Pillow would otherwise carry into the PNG."""
    if image.mode not in _PNG_MODES:
        raise ValueError(f"PNG cannot store mode {image.mode}; convert it (e.g. to RGB) first")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"cannot encode an empty image of size {image.size}")
    clean = image.copy()
    # Transparency is pixel data for P/L/RGB images, not metadata; everything else goes.
    transparency = image.info.get("transparency")
    clean.info = {} if transparency is None else {"transparency": transparency}
    return clean
