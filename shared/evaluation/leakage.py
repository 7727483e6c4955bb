"""The held-out photos must never reach training or the scene library: by path, by content, or as a
resized or re-encoded copy (a near-duplicate by perceptual hash)."""

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
# photo's nearest train photo 68 or more). A 64-bit hash put two burst shots 3 bits apart.
NEAR_DUPLICATE_MAX_BITS = 12
_HASH_SIDE = 16  # 16 x 16 neighbour comparisons: 256 bits
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
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (128, 128))  # a JPEG decodes at a fraction of its size: milliseconds
            shown = ImageOps.exif_transpose(image)
            if shown.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grey
                values = np.asarray(shown, dtype=np.float32)
                top = float(values.max()) or 1.0
                shown = Image.fromarray((np.clip(values, 0, None) * (255.0 / top)).astype(np.uint8))
            thumbnail = shown.convert("L").resize((_HASH_SIDE + 1, _HASH_SIDE), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    pixels = np.asarray(thumbnail, dtype=np.int16)
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
    """Raise ``LeakageError`` when a held-out (name, perceptual hash) is within ``max_bits`` of one of
    another set: a resized or re-encoded copy of a held-out photo, which ``check_disjoint`` misses."""
    held = list(heldout)
    if not held:
        return
    held_hashes = np.frombuffer(b"".join(value for _, value in held), dtype=np.uint8).reshape(len(held), -1)
    problems = []
    for what, items in others.items():
        for name, value in items:
            other = np.frombuffer(value, dtype=np.uint8)
            distances = np.unpackbits(held_hashes ^ other, axis=1).sum(axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= max_bits:
                problems.append(
                    f"{what} {name} looks like a copy of held-out {held[nearest][0]} (perceptual hash "
                    f"{int(distances[nearest])} of {other.size * 8} bits apart: resized or re-encoded)"
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
