"""Hardened image decoding and deterministic PNG encoding, used by every stage that touches pixels.

Every image arrives from outside (retailer photos, generated images, human-made masks), so
decoding refuses with a machine-readable ``ImageRejected`` reason instead of crashing or
silently repairing:

``empty``               zero bytes
``too_large_bytes``     more bytes than ``max_bytes``
``not_an_image``        Pillow cannot identify the bytes as any image format
``format_not_allowed``  an image, but not one of ``allowed_formats``
``zero_size``           the header declares a zero width or height
``too_many_pixels``     the header declares more than ``max_pixels`` (checked before decoding;
                        Pillow's own decompression-bomb limit counts as well)
``truncated``           the pixel data ends early
``corrupt``             the pixel data is damaged (bad checksum, broken stream...)
``unsupported_mode``    a pixel layout that cannot be turned into RGB / a mask

Odd but valid images are converted, never refused: 16-bit and 32-bit grayscale are
rescaled (not clipped) to 8 bits, CMYK / palette / grayscale / bilevel become RGB, images
with alpha (an alpha channel, or a transparent colour key: PNG tRNS) are composited over
white (product photos are shot and sold on white), EXIF orientation is applied and animated
images yield their first frame.
``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left off: a half image is not a photo.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from shared.errors import ImageRejected

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 2**20
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
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

UInt8Array = npt.NDArray[np.uint8]


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_formats: Sequence[str] = DEFAULT_FORMATS,
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded 8-bit ``RGB`` image.

    EXIF orientation is applied, alpha is composited over white and high-bit-depth
    grayscale is rescaled to 8 bits. Raises ``ImageRejected`` with one of the reason codes
    listed in this module's docstring.
    """
    image = _open_and_load(data, max_pixels=max_pixels, max_bytes=max_bytes, allowed_formats=allowed_formats)
    return _to_rgb(image, data)


def decode_mask(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_formats: Sequence[str] = ("PNG", "BMP", "TIFF", "WEBP"),
) -> UInt8Array:
    """Decode an untrusted mask image into a ``uint8`` HxW array of 0 (background) and 255 (object).

    The image is reduced to luminance (16-bit masks rescaled, not clipped) and thresholded
    at 128. Transparent pixels count as background: alpha is composited over black.
    EXIF orientation is applied, as ``decode_image`` does, so a mask stays aligned with its
    photo. Refusals are the same ``ImageRejected`` reasons as ``decode_image``.
    """
    image = _open_and_load(data, max_pixels=max_pixels, max_bytes=max_bytes, allowed_formats=allowed_formats)
    gray = _to_gray8(image, data)
    return np.where(gray >= 128, np.uint8(255), np.uint8(0)).astype(np.uint8)


def refuse_oversized(size_bytes: int, max_bytes: int) -> None:
    """``ImageRejected('too_large_bytes')`` for more than ``max_bytes``; a caller holding a file can
    ask with its size before reading it."""
    if size_bytes > max_bytes:
        raise ImageRejected("too_large_bytes", f"{size_bytes} bytes; at most {max_bytes} are allowed")


def photo_as_stored(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Image.Image, bytes]:
    """A photo file as skuforge stores it: decoded (``decode_image``: EXIF orientation applied, 8-bit
    RGB) and re-encoded as PNG (``encode_png``). ``skuforge ingest`` stores these bytes, so a JPEG
    never matches its stored copy byte for byte; ``skuforge evaluate`` compares held-out photos with
    the store through this. Raises ``ImageRejected``."""
    image = decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    return image, encode_png(image)


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
    data: bytes, *, max_pixels: int, max_bytes: int, allowed_formats: Sequence[str]
) -> Image.Image:
    """Run every refusal in order (cheap header checks before any pixel is decoded) and load frame 0."""
    if not data:
        raise ImageRejected("empty", "zero bytes")
    refuse_oversized(len(data), max_bytes)
    try:
        # Image.open reads only the header; pixels are decoded by load() below.
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        if _png_declares_zero_size(data):
            raise ImageRejected("zero_size", "PNG header declares a zero width or height") from exc
        raise ImageRejected("not_an_image", "bytes are not in any known image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageRejected("corrupt", f"unreadable image header: {exc}") from exc

    image_format = _FORMAT_ALIASES.get(image.format or "", image.format or "")
    allowed = {name.upper() for name in allowed_formats}
    if image_format not in allowed:
        raise ImageRejected(
            "format_not_allowed", f"format {image.format or 'unknown'} is not one of {sorted(allowed)}"
        )

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("zero_size", f"image is {width}x{height}")
    limit = _pixel_limit(max_pixels)
    if width * height > limit:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels; limit {limit}")

    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except EOFError as exc:
        raise ImageRejected("truncated", f"pixel data ends early: {exc}") from exc
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"{image_format} pixel data: {exc}") from exc

    return _apply_exif_orientation(image)


def _pixel_limit(max_pixels: int) -> int:
    """Our limit, tightened to Pillow's bomb-warning threshold so that warning is always a refusal.

    Reading the threshold instead of turning the warning into an error with
    ``warnings.catch_warnings`` keeps this safe in threaded services (that context manager
    mutates process-wide state).
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, int(pillow_limit))


def _png_declares_zero_size(data: bytes) -> bool:
    """Pillow refuses zero-sized PNGs as unidentifiable; read IHDR ourselves to give the real reason."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width == 0 or height == 0


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation says.

    Malformed EXIF only loses the orientation hint: the pixels themselves decoded fine, and
    refusing a good photo over a broken metadata block would lose more than it protects.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation == 1:
            # exif_transpose would copy the whole image even when there is nothing to do.
            return image
        transposed = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return image
    return image if transposed is None else transposed


def _to_rgb(image: Image.Image, data: bytes) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB; alpha is composited over white. ``data`` is the file."""
    keyed = _colour_key_alpha(image, data)
    if keyed is not None:
        rgb = np.asarray(_to_rgb(_without_colour_key(image), data), dtype=np.uint16)
        return Image.fromarray(_composite(rgb, keyed[..., None], background=255))
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
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        return Image.fromarray(_composite(rgba[..., :3], rgba[..., 3:4], background=255))
    try:
        # "1", "L", "CMYK", "YCbCr", "LAB", "HSV" and friends: Pillow's own conversions.
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {mode} to RGB") from exc


def _to_gray8(image: Image.Image, data: bytes) -> UInt8Array:
    """Convert any decoded mode to an 8-bit HxW luminance array; alpha is composited over black.
    ``data`` is the file."""
    keyed = _colour_key_alpha(image, data)
    if keyed is not None:
        gray = _to_gray8(_without_colour_key(image), data).astype(np.uint16)
        return _composite(gray, keyed, background=0)
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _scale_to_uint8(image)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = image.mode
    if mode in _ALPHA_MODES:
        la = np.asarray(image.convert("LA"), dtype=np.uint16)
        return _composite(la[..., 0], la[..., 1], background=0)
    try:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {mode} to a mask") from exc


def _colour_key_alpha(image: Image.Image, data: bytes) -> npt.NDArray[np.uint16] | None:
    """The alpha (0 or 255, HxW) of an image made transparent by a colour key, else None.

    A grayscale or RGB PNG may mark one colour transparent (tRNS) instead of carrying an alpha
    channel; optimisers write cut-outs that way. Pillow keeps the key in ``info``, not in the
    pixels, so without this those pixels would show their hidden colour (often black).
    Palette images are left to Pillow's own conversion, which already applies their key.
    The key is in the file's bit depth (``data``'s IHDR), which is not always the pixels' depth:
    Pillow scales 2- and 4-bit grayscale up to 8 bits and keeps only the high byte of 16-bit RGB.
    """
    key = image.info.get("transparency")
    if key is None or image.mode not in ("1", "L", "RGB", "I", *_SIXTEEN_BIT_MODES):
        return None
    bit_depth = _png_bit_depth(data)
    values = np.asarray(image)
    if image.mode == "RGB":
        if not (isinstance(key, tuple) and len(key) == 3 and all(isinstance(k, int) for k in key)):
            return None
        depth = bit_depth if bit_depth == 16 else 8
        if not all(0 <= k < 2**depth for k in key):
            return None  # a key no pixel can have: nothing is transparent
        if depth == 16:
            # The pixels hold each sample's high byte; matching that alone would also hide every
            # colour within 1/256 of the key, so the low bytes must match too.
            low = _png_rgb16_low_bytes(data, values.shape)
            transparent = np.ones(values.shape[:2], dtype=np.bool_)
            for channel, sample in enumerate(key):
                transparent &= values[..., channel] == sample >> 8
                transparent &= low[..., channel] == sample & 0xFF
        else:
            transparent = (values[..., 0] == key[0]) & (values[..., 1] == key[1]) & (values[..., 2] == key[2])
    else:
        if not isinstance(key, int):
            return None
        if image.mode == "L" and bit_depth in (2, 4):
            if not 0 <= key < 2**bit_depth:
                return None  # a key no pixel can have: nothing is transparent
            # Pillow stretches 2- and 4-bit samples onto 0..255 by exact multiples (85, 17).
            key = key * 255 // (2**bit_depth - 1)
        # Mode "1" arrays are bool: the key 0/1 (or 0/255) compares as black/white.
        transparent = values == (bool(key) if values.dtype == np.bool_ else key)
    return np.where(transparent, np.uint16(0), np.uint16(255)).astype(np.uint16)


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
            # Refused rather than matched on the high byte alone, which would hide near-key colours.
            raise ImageRejected(
                "unsupported_mode", "a 16-bit RGB PNG with a colour key that cannot be read at full depth"
            )
        tile = tiles[0]
        little_endian = (tile[0], tile[1], tile[2], "RGB;16L")
        again.tile = [tile._make(little_endian) if hasattr(tile, "_make") else little_endian]
        again.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageRejected("corrupt", f"PNG pixel data: {exc}") from exc
    low = np.asarray(_apply_exif_orientation(again), dtype=np.uint8)
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

    16-bit modes map 0..65535 onto 0..255. Mode "I" (32-bit int) is treated as 16-bit when
    its values fit in 0..65535 (that is what Pillow and most TIFF/PNG writers put there) and
    is stretched over its actual range otherwise. Mode "F" (float) maps 0..1 onto 0..255,
    keeps values already in 0..255 and stretches anything else; NaN becomes 0.
    """
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        # Integer rounding keeps a 40-megapixel image at 4 bytes a pixel instead of float64's 8.
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.mode == "F":
        floats = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(floats.min()), float(floats.max())) if floats.size else (0.0, 1.0)
        if low >= 0.0 and high <= 1.0:
            return _scale_range(floats, 0.0, 1.0)
        if low >= 0.0 and high <= 255.0:
            return _scale_range(floats, 0.0, 255.0)
        return _scale_range(floats, low, high)
    ints = values.astype(np.float64)
    low, high = (float(ints.min()), float(ints.max())) if ints.size else (0.0, 0.0)
    if low >= 0.0 and high <= 65535.0:
        return _scale_range(ints, 0.0, 65535.0)
    return _scale_range(ints, low, high)


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
