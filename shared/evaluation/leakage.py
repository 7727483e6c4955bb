"""The held-out photos must never reach training or the scene library: by path, by content, or as a
resized, re-encoded, mirrored or turned copy (a near-duplicate by perceptual hash)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Bits (of 256) within which two photos are the same photo. A resized, re-encoded copy differs from
# its original by 0-6 bits; distinct photos by 20 or more (GroceryStoreDataset, 2026-12-02: 80 test
# photos shrunk to 300 px and saved as JPEG quality 60 read 0-6; the nearest other photo of each of the
# 2,640 train photos, burst shots of one shelf among them, is 20 or more bits away, and of each test
# photo's nearest train photo 68 or more). A 64-bit hash put two burst shots 3 bits apart. Mirrored,
# the nearest other train photo is 72 bits or more away, and a photo from its own mirror image 77.
# Turned by 90, 180 or 270 degrees, mirrored or not, each of the 2,485 test photos is 70 bits or more
# from every train photo; turned copies (200 test photos, each turned three ways, shrunk to 300 px,
# JPEG quality 60) read 8 bits at most (2026-12-02).
NEAR_DUPLICATE_MAX_BITS = 12
_HASH_SIDE = 16  # 16 x 16 neighbour comparisons: 256 bits
_HASH_BYTES = _HASH_SIDE * _HASH_SIDE // 8
# A hash with fewer neighbour steps of 2 grey levels or more than this says too little to compare.
MIN_INFORMATIVE_STEPS = 96


class LeakageError(ValueError):
    """A held-out photo is also a training image or a scene; the message names them."""


def check_disjoint(heldout: Iterable[tuple[str, str]], **others: Iterable[tuple[str, str]]) -> None:
    """Raise ``LeakageError`` when a held-out (name, sha256) shares a path or a hash with any other set.

    Names that are local paths are compared resolved (a symlink or ``..`` does not hide a file).
    """
    held = list(heldout)
    held_paths = {_canonical(name): name for name, _ in held}
    held_hashes = {sha: name for name, sha in held}
    problems = []
    for what, items in others.items():
        for name, sha in items:
            if sha in held_hashes:
                problems.append(f"{what} {name} has the same content as held-out {held_hashes[sha]}")
            elif _canonical(name) in held_paths:
                problems.append(f"{what} {name} is the held-out file {held_paths[_canonical(name)]}")
    _raise(problems)


def perceptual_hash(data: bytes) -> bytes | None:
    """The 256-bit difference hash of a photo as it is shown (EXIF orientation applied): which of each
    two neighbouring pixels of a 17 x 16 grey thumbnail is brighter. Resizing and re-encoding barely move
    it. None when the bytes do not open as an image, or when too few neighbours differ (a mostly blank
    frame): flat photos all have about the same hash, which says nothing about copies."""
    pixels = _thumbnail(data, turns=(0,))
    return None if pixels is None else _difference_hash(pixels[0])


# The held-out photo's variants heldout_hash covers, in its order: as shown, then turned
# counter-clockwise by 90, 180 and 270 degrees; each followed by its mirror image.
_TURNS = (0, 90, 180, 270)
_VARIANTS = (
    "as shown",
    "mirrored",
    *(f"turned {turn} degrees{mirror}" for turn in _TURNS[1:] for mirror in ("", " and mirrored")),
)


def heldout_hash(data: bytes) -> bytes | None:
    """A held-out photo's hash: ``perceptual_hash`` of the photo, then of its mirror image, then the same
    for the photo turned by 90, 180 and 270 degrees (2,048 bits), so that a flipped copy (the commonest
    augmentation) and a turned one (a phone photo saved again without its EXIF orientation) are caught
    as well as a resized one."""
    pixels = _thumbnail(data, turns=_TURNS)
    if pixels is None:
        return None
    hashes = []
    for turned in pixels:
        shown = _difference_hash(turned)
        if shown is None:
            return None
        mirrored = _difference_hash(turned[:, ::-1])
        assert mirrored is not None  # the same steps, in the other order
        hashes += [shown, mirrored]
    return b"".join(hashes)


def _thumbnail(data: bytes, *, turns: tuple[int, ...]) -> list[np.ndarray] | None:
    """The 17 x 16 grey thumbnail of the photo as shown, turned counter-clockwise by each of ``turns``
    degrees (multiples of 90) before it is shrunk; None when the bytes are no image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (128, 128))  # a JPEG decodes at a fraction of its size: milliseconds
            shown = ImageOps.exif_transpose(image)
            if shown.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grey
                values = np.asarray(shown, dtype=np.float32)
                top = float(values.max()) or 1.0
                shown = Image.fromarray((np.clip(values, 0, None) * (255.0 / top)).astype(np.uint8))
            grey = shown.convert("L")
            size = (_HASH_SIDE + 1, _HASH_SIDE)
            thumbnails = [
                (grey.rotate(turn, expand=True) if turn else grey).resize(size, Image.Resampling.BILINEAR)
                for turn in turns
            ]
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return [np.asarray(thumbnail, dtype=np.int16) for thumbnail in thumbnails]


def _difference_hash(pixels: np.ndarray) -> bytes | None:
    steps = pixels[:, 1:] - pixels[:, :-1]
    # Neighbours of (nearly) equal grey carry no bit: a photo that is mostly blank background would
    # match any other mostly blank one. Such a photo is left to the byte checks.
    if np.count_nonzero(np.abs(steps) >= 2) < MIN_INFORMATIVE_STEPS:
        return None
    return np.packbits(steps > 0).tobytes()


def check_no_near_duplicates(
    heldout: Iterable[tuple[str, bytes]],
    *,
    max_bits: int = NEAR_DUPLICATE_MAX_BITS,
    **others: Iterable[tuple[str, bytes]],
) -> None:
    """Raise ``LeakageError`` when another set's (name, ``perceptual_hash``) is within ``max_bits`` of a
    held-out (name, ``heldout_hash``), as shown, mirrored or turned: a resized, re-encoded, flipped or
    turned copy of a held-out photo, which ``check_disjoint`` misses."""
    held = list(heldout)
    if not held:
        return
    if any(len(value) != len(_VARIANTS) * _HASH_BYTES for _, value in held):
        raise ValueError("held-out hashes must come from heldout_hash (the photo mirrored and turned)")
    held_hashes = np.frombuffer(b"".join(value for _, value in held), dtype=np.uint8).reshape(-1, _HASH_BYTES)
    problems = []
    for what, items in others.items():
        for name, value in items:
            other = np.frombuffer(value, dtype=np.uint8)
            distances = np.unpackbits(held_hashes ^ other, axis=1).sum(axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= max_bits:
                variant = _VARIANTS[nearest % len(_VARIANTS)]
                how = "resized or re-encoded" if variant == "as shown" else f"{variant}, perhaps resized"
                original = held[nearest // len(_VARIANTS)][0]
                problems.append(
                    f"{what} {name} looks like a copy of held-out {original} (perceptual "
                    f"hash {int(distances[nearest])} of {other.size * 8} bits apart: {how})"
                )
    _raise(problems)


def _raise(problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise LeakageError(f"held-out photos must not be used for training or scenes: {shown}")


def _canonical(name: str) -> str:
    if "://" in name:
        return name
    return str(Path(name).resolve())
