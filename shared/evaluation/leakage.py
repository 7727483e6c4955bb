"""The held-out photos must never reach training or the scene library: by path, by content, or as a
resized, re-encoded, mirrored or turned copy (a near-duplicate by perceptual hash)."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
from PIL import Image

from shared.errors import ImageRejected
from shared.images import (
    DEFAULT_MAX_PIXELS,
    apply_exif_orientation,
    past_pillows_limit,
    refuse_misplaced_tiff_pixels,
    refuse_too_many_pixels,
    seek_photo_page,
    to_rgb,
)

# Bits (of 256) within which two photos are the same photo. A resized, re-encoded copy differs from
# its original by 0-10 bits; distinct photos by 20 or more (GroceryStoreDataset: 80 test photos shrunk
# to 300 px and saved as JPEG quality 60 read 0-6, and of 200, all but one 0-5 and that one 10; the
# nearest other photo of each of the 2,640 train photos, burst shots of one shelf among them, is 20
# or more bits away, and of each test photo's nearest train photo 68 or more). A 64-bit hash put two
# burst shots 3 bits apart. Mirrored, the nearest other train photo is 72 bits or more away, and a
# photo from its own mirror image 77. Turned by 90, 180 or 270 degrees, mirrored or not, each of the
# 2,485 test photos is 70 bits or more from every train photo; turned copies (200 test photos, each
# turned three ways, shrunk to 300 px, JPEG quality 60) read 8 bits at most (2026-12-02). A product
# shot on a plain background is hashed by its content inside that border (below): the 81 catalogue
# photos, products on white, are then 22 bits or more from each other (by their whole frame, 17 pairs
# read 12 bits or fewer, and 15 photos had no hash) and 62 or more from every in-store photo; the
# in-store figures above, measured again, hold (2026-12-03). Store and scene images are compared by
# ``copy_hashes``, which adds the part inside plain bars (letterboxing): 388 of the 2,640 train and 81
# catalogue photos got a second or third part, and none of them came within 20 bits of any other test
# or catalogue photo's held-out hash; the 18 in-store sample photos padded with black or white bars of
# 8-25% read 0-4 bits from their originals, 8-84 before (2026-12-04); again with 8-25% bars above and
# below or at the sides and JPEG quality 85, 0-12 bits (0-6 above and below), the same before and
# after the cut below (2026-12-06); side bars of 25-35% (JPEG quality 60 or 85) let 3 of 216 copies
# of a juice carton pass with 14 bits, until the line where the bars blend into the photo was left
# out (``_BLEND_SHARE``). The held-out photo is hashed
# inside its bars too, cut out before it is shrunk (``_inside_bars``): 60 non-square train photos
# padded to a square (white or black bars, 256 px) read 0-8 bits from their originals, 10-44 before;
# the nearest other photo of each of the 2,721 train and catalogue photos is still 20 or more bits away
# (2026-12-06).
NEAR_DUPLICATE_MAX_BITS = 12
_HASH_SIDE = 16
HASH_BITS = _HASH_SIDE * _HASH_SIDE  # 16 x 16 neighbour comparisons: what "n of 256 bits apart" counts
_HASH_BYTES = HASH_BITS // 8
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


def perceptual_hash(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | None:
    """The 256-bit difference hash of what a photo shows (EXIF orientation applied): which of each two
    neighbouring pixels of a 17 x 16 grey thumbnail is brighter. A photo whose plain border (a studio
    background) takes up a quarter of the frame or more is hashed by its content inside that border
    (the product), any other by its whole frame. Resizing and re-encoding barely move it. None when the
    bytes do not open as an image, or when too few neighbours differ (a blank frame, a plain product):
    flat pictures all have about the same hash, which says nothing about copies. ``ImageRejected``
    (``too_many_pixels``) past ``max_pixels``, as ``decode_image`` (a JPEG decoded scaled down to fit)."""
    views = _views(data, max_pixels)
    if views is None:
        return None
    frame, content = views
    shown = content if _product_shot(content) else frame
    return _difference_hash(shown.thumbnail(turn=0))


def image_variant_hashes(image: Image.Image) -> dict[str, bytes]:
    """``perceptual_hash`` of a photo already decoded as shown (``decode_image``'s RGB: EXIF orientation
    applied, transparency over white), as shown, mirrored and turned: each variant of ``_VARIANTS`` by
    its name ("as shown", "mirrored", "turned 90 degrees clockwise"...), those with detail enough. For a
    caller that holds the photo: hashed from its file, a PNG or TIFF, which has no reduced decode, was
    decoded whole a second time while the first was still held. It is shrunk by a whole factor, as a JPEG's
    reduced decode is, and never copied at its full size. Ingest compares a photo as shown with every
    variant of the earlier ones of its folder: by "as shown" alone, a flipped or turned copy passed."""
    frame, content = _views_from(lambda at_least_px: _reduced_grey(image, at_least_px))
    shown = content if _product_shot(content) else frame
    hashes = zip(_VARIANTS, _each_variant_hash(shown), strict=True)
    return {variant: value for variant, value in hashes if value is not None}


def copy_hashes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | None:
    """What a store or scene image is compared by: ``perceptual_hash``, and where that took the whole
    frame of a photo that has a plain border (its content over ``_MAX_CONTENT_SHARE`` of the frame), the
    content's hash too (512 bits then). A held-out photo letterboxed or padded with plain bars (black or
    white, under a quarter of the frame) was hashed by its frame, bars included, and passed: bars of 8%
    of its height put in-store photos 8-33 bits from their originals, resized copies read 0-4. None as
    ``perceptual_hash``, and refused past ``max_pixels`` as it."""
    views = _views(data, max_pixels)
    if views is None:
        return None
    frame, content = views
    inside = _inside_bars(frame)
    shown = (content,) if _product_shot(content) else (frame, content)
    parts = [_difference_hash(view.thumbnail(turn=0)) for view in (*shown, inside) if view is not None]
    return b"".join(part for part in parts if part is not None) or None


def _product_shot(content: _View | None) -> TypeGuard[_View]:
    """Whether a store or scene image is hashed by its content: a plain border around at most
    ``_MAX_CONTENT_SHARE`` of the frame (a product shot), not an in-store photo with a plain edge."""
    return content is not None and content.share <= _MAX_CONTENT_SHARE


# Plain bars along the edges (letterboxing, padding to a square or a ratio): whole rows or columns of
# one colour, the first line's. A line is a bar line when nearly all its pixels are within a JPEG's
# noise of that colour; the bars may take at most half of either side. The first line past them is
# left out too when its pixels are, on average, nearer the bar colour than ``_BLEND_SHARE`` of the next
# line's: the bars' edge blended into the photo's (bars ending inside a pixel of a JPEG's reduced
# decode, or JPEG's ringing). Kept, it darkened or lightened the part's edge: padded with side bars
# of 5-40% (black or white, JPEG quality 60 or 85), 11 of 1,872 copies of the 18 in-store sample
# photos and 60 train photos read 13-15 bits from their originals and passed, none past 9 once left
# out; the nearest other of each of the 2,721 train and catalogue photos is still 20 bits or more
# away (``bench.leakage_bars``, 2026-12-06).
_BAR_GREY_LEVELS = 16
_BAR_LINE_SHARE = 0.98
_MAX_BARS_SHARE = 0.5
_BLEND_SHARE = 0.8


def _inside_bars(frame: _View) -> _View | None:
    """The part of ``frame`` inside plain bars along its edges, cut out of it; None when it has none.
    Cut out, not a box of the frame: the thumbnail's filter reaches past a box's edges, and the bars
    it blended into the edge pixels put a padded copy up to 20 bits from its original (60 train photos
    padded to a square with white or black bars, shrunk to 256 px), 0-8 once cut out."""
    bars = _bars_box(frame.grey)
    if bars is None:
        return None
    left, top, right, bottom = (int(edge) for edge in bars)  # whole lines: _bars_box counts them
    inside = frame.grey.crop((left, top, right, bottom))
    return _View(inside, (0.0, 0.0, float(inside.width), float(inside.height)))


def _bars_box(grey: Image.Image) -> Box | None:
    """The box inside plain bars along ``grey``'s edges and the line each blends into; None when it
    has none."""
    pixels = np.asarray(grey, dtype=np.int16)

    def bar_lines(lines: np.ndarray) -> int:
        colour = float(np.median(lines[0]))
        off = np.abs(lines - colour)
        plain = np.mean(off <= _BAR_GREY_LEVELS, axis=1) >= _BAR_LINE_SHARE
        if plain.all():
            return len(lines)
        count = int(np.argmin(plain))
        # The bars' edge blended into the photo's: nearer the bar colour than the next line.
        if count and count + 1 < len(lines) and off[count].mean() < _BLEND_SHARE * off[count + 1].mean():
            count += 1
        return count

    height, width = pixels.shape
    top, bottom = bar_lines(pixels), bar_lines(pixels[::-1])
    left, right = bar_lines(pixels.T), bar_lines(pixels.T[::-1])
    if not top + bottom + left + right:
        return None
    if top + bottom > height * _MAX_BARS_SHARE or left + right > width * _MAX_BARS_SHARE:
        return None
    return float(left), float(top), float(width - right), float(height - bottom)


# The held-out photo's variants heldout_hash covers, in its order: as shown, then turned
# counter-clockwise by 90, 180 and 270 degrees; each followed by its mirror image. It holds them for
# the whole frame, then for the content inside a plain border, then for the part inside plain bars.
_TURNS = (0, 90, 180, 270)
# Each turn as a message names it, with its way: "turned 90 degrees" said none, and a quarter turn
# clockwise read "turned 270 degrees". A half turn is the same either way.
_TURN_NAMES = {
    90: "turned 90 degrees counter-clockwise",
    180: "turned 180 degrees",
    270: "turned 90 degrees clockwise",
}
_VARIANTS = (
    "as shown",
    "mirrored",
    *(f"{_TURN_NAMES[turn]}{mirror}" for turn in _TURNS[1:] for mirror in ("", " and mirrored")),
)
# Its parts, in order: the whole frame, the content inside a plain border, the part inside plain bars.
_HELDOUT_PARTS = 3
_HELDOUT_HASHES = _HELDOUT_PARTS * len(_VARIANTS)


def heldout_hash(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | None:
    """A held-out photo's hash (6,144 bits): ``perceptual_hash`` of its whole frame, of its mirror image,
    and of both turned by 90, 180 and 270 degrees; then the same of its content inside a plain border,
    however much of the frame that border takes, and of the part inside plain bars (``copy_hashes``'
    third part). So a flipped copy (the commonest augmentation) and a turned one (a phone photo saved
    again without its EXIF orientation) are caught as well as a resized one, and a copy is compared by
    the same part of the photo whichever part ``perceptual_hash`` takes of it; a held-out photo padded
    to a square with plain bars, by its frame alone, read 13-24 bits from the store photo it pads. Where
    the photo has no plain border or bars, or a part has too little detail in one of all its variants,
    the first part there is stands in for it; None when none can be hashed. Refused past ``max_pixels``
    as ``perceptual_hash``."""
    views = _views(data, max_pixels)
    if views is None:
        return None
    frame, content = views
    parts = [
        None if view is None else _variant_hashes(view) for view in (frame, content, _inside_bars(frame))
    ]
    first = next((part for part in parts if part is not None), None)
    if first is None:
        return None
    return b"".join(part if part is not None else first for part in parts)


def _variant_hashes(view: _View) -> bytes | None:
    """The hashes of ``view`` in the order of ``_VARIANTS``; None when none of them has enough detail.

    A variant with too little detail (stripes along one axis turned across it: the hash compares
    left-right neighbours only) takes the first informative variant's hash in its place. A copy
    turned that way has no hash of its own either (``perceptual_hash`` is None), so the stand-in
    matches nothing that variant would have; before, one such variant dropped the whole part, and a
    photo with no plain border was left unchecked, its plain copies included."""
    hashes = _each_variant_hash(view)
    informative = next((value for value in hashes if value is not None), None)
    if informative is None:
        return None
    return b"".join(value if value is not None else informative for value in hashes)


def _each_variant_hash(view: _View) -> list[bytes | None]:
    """The hash of ``view`` in each variant of ``_VARIANTS``, in its order; None for one with too
    little detail."""
    hashes: list[bytes | None] = []
    for turn in _TURNS:
        pixels = view.thumbnail(turn=turn)
        shown = _difference_hash(pixels)
        mirrored = None if shown is None else _difference_hash(pixels[:, ::-1])  # the same steps, mirrored
        hashes += [shown, mirrored]
    return hashes


# A plain border (a studio background) is trimmed before hashing: a product 30% of the frame wide on
# white leaves too few informative steps in the whole frame, and where it leaves enough, the frame's
# hash is mostly the product's outline (two milk cartons of one brand, GroceryStoreDataset's catalogue
# photos, read 6 bits apart). The border is found from the frame's outermost pixels: at least half of
# them within 24 grey levels of their median. Each pixel weighs its difference from that grey, less 12
# levels of JPEG noise and shading; the content's box leaves out 1% of that weight on each side, to a
# fraction of a pixel. Unlike "every pixel off the background", such a box moves smoothly as a copy
# is resized or re-encoded: a box one pixel off put a 600 px copy of a packshot 31 bits away.
_BACKGROUND_GREY_LEVELS = 24
_MIN_BACKGROUND_EDGE = 0.5
_NOISE_GREY_LEVELS = 12
_TRIMMED_WEIGHT = 0.01
# A store or scene image is hashed by its content when its box covers at most this share of the frame
# (GroceryStoreDataset's catalogue photos: 16% to 71%); above it, by its frame, as a photo without a
# border is (a few in-store photos, a plain wall along one edge). The held-out photo has both.
_MAX_CONTENT_SHARE = 0.75
# The frame is decoded at least this many pixels across for the frame's thumbnail (a JPEG decodes at a
# fraction of its size: milliseconds), and again larger when its content is narrower than this.
_DECODE_PX = 128

Box = tuple[float, float, float, float]  # left, top, right, bottom, in pixels (fractions included)


@dataclass(frozen=True)
class _View:
    """The part ``box`` of ``grey``, a photo as shown: what a hash is taken of."""

    grey: Image.Image
    box: Box

    @property
    def share(self) -> float:
        """The share of the frame the box covers."""
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top) / (self.grey.width * self.grey.height)

    def thumbnail(self, *, turn: int) -> np.ndarray:
        """The 17 x 16 thumbnail of the box, turned counter-clockwise by ``turn`` degrees first."""
        grey, box = self.grey, self.box
        if turn:
            width, height = grey.size
            left, top, right, bottom = box
            box = {
                90: (top, width - right, bottom, width - left),
                180: (width - right, height - bottom, width - left, height - top),
                270: (height - bottom, left, height - top, right),
            }[turn]
            grey = grey.transpose(_TRANSPOSE[turn])
        thumbnail = grey.resize((_HASH_SIDE + 1, _HASH_SIDE), Image.Resampling.BILINEAR, box=box)
        return np.asarray(thumbnail, dtype=np.int16)


_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _views(data: bytes, max_pixels: int) -> tuple[_View, _View | None] | None:
    """The photo's whole frame and, where it has a plain border, its content; None when the bytes are
    no image. Past ``max_pixels`` refused, not None: the stages refuse it too, and it is no blank frame."""
    try:
        return _views_from(lambda at_least_px: _decode_grey(data, at_least_px, max_pixels))
    except ImageRejected as exc:
        if exc.reason == "too_many_pixels":
            raise
        return None
    except (OSError, SyntaxError, ValueError):  # SyntaxError: a PNG's broken chunk, past its header
        return None


def _views_from(grey_at: Callable[[int], Image.Image]) -> tuple[_View, _View | None]:
    """The photo's whole frame and, where it has a plain border, its content; ``grey_at(px)`` is the
    photo in grey, reduced to no less than ``px`` a side where it is larger."""
    grey = grey_at(_DECODE_PX)
    frame = _View(grey, (0.0, 0.0, float(grey.width), float(grey.height)))
    box = _content_box(grey)
    narrowest = 0.0 if box is None else min(box[2] - box[0], box[3] - box[1])
    if box is not None and narrowest < _DECODE_PX:
        # Reduced less (where a JPEG allows), so that a narrow product has pixels enough.
        try:
            larger = grey_at(math.ceil(_DECODE_PX * max(grey.size) / max(narrowest, 1.0)))
        except ImageRejected:  # a JPEG reduced less would be past the limit: the first decode it is
            larger = grey
        if larger.size != grey.size:
            grey, box = larger, _content_box(larger)
    return frame, None if box is None else _View(grey, box)


def _reduced_grey(image: Image.Image, at_least_px: int) -> Image.Image:
    """``image`` in grey, shrunk by the largest whole factor up to 8 that leaves ``at_least_px`` a side,
    as ``Image.draft`` picks a JPEG's reduced decode, so it is not copied at its full size."""
    factor = max(1, min(8, min(image.size) // at_least_px))
    return (image.reduce(factor) if factor > 1 else image).convert("L")


def _decode_grey(data: bytes, at_least_px: int, max_pixels: int) -> Image.Image:
    """The photo as shown, in grey, converted as ingest stores it (``to_rgb``): transparent pixels over
    white, a colour profile applied, deep grey scaled as ``decode_image`` scales it. Otherwise a copy
    hashes other pixels: a cut-out whose hidden colour is black is a black frame, and with profiles
    left out the 81 iconic photos read 0-27 bits from their stored copies (3 over 12), 0-1 applied.
    ``ImageRejected`` (``too_many_pixels``) past ``max_pixels`` after a JPEG's reduced decode, before
    any pixel is decoded: Pillow only warns below twice its own limit, and decoded a 150 MP PNG whole."""
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # past twice Pillow's limit: refused in a stage's words
        raise past_pillows_limit(exc) from exc
    with opened as image:
        seek_photo_page(image)  # the page ingest stores, past a TIFF's preview or mask ahead of it
        refuse_misplaced_tiff_pixels(image, data)
        # A colour profile applies to colour: a JPEG decoded straight to grey would lose it.
        image.draft("RGB" if image.info.get("icc_profile") else "L", (at_least_px, at_least_px))
        refuse_too_many_pixels(*image.size, max_pixels, "")
        shown = apply_exif_orientation(image)  # a malformed EXIF block loses only its orientation
        if shown.mode != "L" or "icc_profile" in shown.info or "transparency" in shown.info:
            shown = to_rgb(shown, data)
        return shown.convert("L")


def _content_box(grey: Image.Image) -> Box | None:
    """The box of what ``grey`` shows inside a plain border; None when it has no plain border (or
    nothing but border)."""
    pixels = np.asarray(grey, dtype=np.int16)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background = float(np.median(edge))
    if np.mean(np.abs(edge - background) <= _BACKGROUND_GREY_LEVELS) < _MIN_BACKGROUND_EDGE:
        return None
    weight = np.clip(np.abs(pixels - background) - _NOISE_GREY_LEVELS, 0, None).astype(np.float64)
    if not weight.any():
        return None
    columns, rows = weight.sum(axis=0), weight.sum(axis=1)
    low, high = _TRIMMED_WEIGHT, 1.0 - _TRIMMED_WEIGHT
    return _at_share(columns, low), _at_share(rows, low), _at_share(columns, high), _at_share(rows, high)


def _at_share(weights: np.ndarray, share: float) -> float:
    """Where, in pixels from the start, the running sum of ``weights`` reaches ``share`` of their sum."""
    running = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
    return float(np.interp(share, running, np.arange(running.size)))


def _difference_hash(pixels: np.ndarray) -> bytes | None:
    steps = pixels[:, 1:] - pixels[:, :-1]
    # Neighbours of (nearly) equal grey carry no bit: a photo that is mostly blank background would
    # match any other mostly blank one. Such a photo is left to the byte checks.
    if np.count_nonzero(np.abs(steps) >= 2) < MIN_INFORMATIVE_STEPS:
        return None
    return np.packbits(steps > 0).tobytes()


def hash_fits(value: bytes, *, heldout: bool) -> bool:
    """Whether ``value`` has the length of a ``heldout_hash`` (``heldout``) or of a ``copy_hashes``
    (256-bit parts): what ``check_no_near_duplicates`` compares, and a cache of them may hold."""
    if heldout:
        return len(value) == _HELDOUT_HASHES * _HASH_BYTES
    return bool(value) and len(value) % _HASH_BYTES == 0


def check_no_near_duplicates(
    heldout: Iterable[tuple[str, bytes]],
    *,
    max_bits: int = NEAR_DUPLICATE_MAX_BITS,
    **others: Iterable[tuple[str, bytes]],
) -> None:
    """Raise ``LeakageError`` when another set's (name, ``perceptual_hash`` or ``copy_hashes``: each of its
    256-bit parts) is within ``max_bits`` of a held-out (name, ``heldout_hash``), as shown, mirrored or
    turned: a resized, re-encoded, flipped, turned or letterboxed copy of a held-out photo, which
    ``check_disjoint`` misses. Each image is named with its nearest held-out variant."""
    held = list(heldout)
    if not held:
        return
    if not all(hash_fits(value, heldout=True) for _, value in held):
        raise ValueError("held-out hashes must come from heldout_hash (the photo mirrored and turned)")
    held_hashes = np.frombuffer(b"".join(value for _, value in held), dtype=np.uint8).reshape(-1, _HASH_BYTES)
    problems = []
    for what, items in others.items():
        named = list(items)
        for name, value in named:
            if not hash_fits(value, heldout=False):
                raise ValueError(f"{what} {name}: hashes are 256-bit parts (perceptual_hash, copy_hashes)")
        if not named:
            continue
        parts = np.frombuffer(b"".join(value for _, value in named), dtype=np.uint8).reshape(-1, _HASH_BYTES)
        item_of_part = np.repeat(np.arange(len(named)), [len(value) // _HASH_BYTES for _, value in named])
        held_rows, part_rows, distances = _pairs_within(held_hashes, parts, max_bits)
        # Per image, its nearest held-out variant (of equals, the first): sorted by image, distance, row.
        items_of_pairs = item_of_part[part_rows]
        order = np.lexsort((held_rows, distances, items_of_pairs))
        firsts = order[np.unique(items_of_pairs[order], return_index=True)[1]]
        for pair in firsts:
            row, distance = int(held_rows[pair]), int(distances[pair])
            variant = _VARIANTS[row % _HELDOUT_HASHES % len(_VARIANTS)]
            # In ingest's words for the same copy.
            how = (
                "resized or re-encoded"
                if variant == "as shown"
                else f"{variant}, perhaps resized or re-encoded"
            )
            problems.append(
                f"{what} {named[int(items_of_pairs[pair])][0]} looks like a copy of held-out "
                f"{held[row // _HELDOUT_HASHES][0]} (perceptual hash {distance} of {HASH_BITS} bits "
                f"apart: {how})"
            )
    _raise(problems)


def copies_across_groups(
    photos: Sequence[tuple[str, str, bytes]], *, max_bits: int = NEAR_DUPLICATE_MAX_BITS
) -> list[tuple[str, str, int, str]]:
    """(name, name of its copy, bits apart, how the copy differs: a variant of ``_VARIANTS``, "as shown"
    when resized or re-encoded) of each pair of photos, given as (group, name, ``heldout_hash``), of
    different groups and within ``max_bits``: one picture held out under two SKU ids, re-encoded,
    resized, mirrored or turned (the same bytes are found by their sha256). Nearest first; each pair
    once. A photo as shown (frame and content) is compared with every variant of the others, as
    ``check_no_near_duplicates`` compares a store image."""
    return _copies(photos, max_bits, same_group=False)


def copies_within_groups(
    photos: Sequence[tuple[str, str, bytes]], *, max_bits: int = NEAR_DUPLICATE_MAX_BITS
) -> list[tuple[str, str, int, str]]:
    """As ``copies_across_groups``, the pairs of the same group: one picture held out twice under one
    SKU id, re-encoded or resized, which scoring would weigh double."""
    return _copies(photos, max_bits, same_group=True)


def variant_back(variant: str) -> str:
    """How a photo differs from its copy that is ``variant`` of it (both of ``_VARIANTS``): a quarter
    turn the other way; as shown, mirrored, a half turn, and a turn then a mirror image (a flip across
    a diagonal) undo themselves."""
    return _VARIANTS[_variant_back(_VARIANTS.index(variant))]


def _variant_back(index: int) -> int:
    """``variant_back`` by index in ``_VARIANTS``: those of a mirror image (odd) undo themselves, and a
    turn of 90 degrees one of 270."""
    return index if index % 2 else -index % len(_VARIANTS)


def _copies(
    photos: Sequence[tuple[str, str, bytes]], max_bits: int, *, same_group: bool
) -> list[tuple[str, str, int, str]]:
    if not photos:
        return []
    if not all(hash_fits(value, heldout=True) for _, _, value in photos):
        raise ValueError("held-out hashes must come from heldout_hash (the photo mirrored and turned)")
    held = np.frombuffer(b"".join(value for _, _, value in photos), dtype=np.uint8).reshape(-1, _HASH_BYTES)
    # Of each photo's variants, each part as shown.
    as_shown = [part * len(_VARIANTS) for part in range(_HELDOUT_PARTS)]
    shown = held.reshape(len(photos), _HELDOUT_HASHES, _HASH_BYTES)[:, as_shown]
    held_rows, part_rows, distances = _pairs_within(held, shown.reshape(-1, _HASH_BYTES), max_bits)
    # Each pair's bits apart and how the second differs from the first, by its index in _VARIANTS (of
    # equals, the first: "as shown").
    nearest: dict[tuple[int, int], tuple[int, int]] = {}
    for held_row, part_row, distance in zip(held_rows, part_rows, distances, strict=True):
        photo, copy = int(held_row) // _HELDOUT_HASHES, int(part_row) // _HELDOUT_PARTS
        first, second = sorted((photo, copy))
        if first != second and (photos[first][0] == photos[second][0]) == same_group:
            # The copy as shown is the photo's variant that the held row holds.
            variant = int(held_row) % _HELDOUT_HASHES % len(_VARIANTS)
            found = (int(distance), variant if photo == first else _variant_back(variant))
            nearest[first, second] = min(found, nearest.get((first, second), found))
    pairs = sorted(nearest.items(), key=lambda item: (item[1][0], item[0]))
    return [
        (photos[first][1], photos[second][1], distance, _VARIANTS[variant])
        for (first, second), (distance, variant) in pairs
    ]


# Bits set in each byte value: the popcount of an XOR of two hashes, a byte at a time.
_BITS_SET = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint16)


def bits_apart(hashes: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The bits each row of ``hashes`` (rows of hash bytes, uint8) is apart from ``other``: one hash
    for every row, or a row of its own for each."""
    return _BITS_SET[hashes ^ other].sum(axis=1)


# Parts compared at a time: bounds the memory of their candidate pairs (at worst every held-out row).
_PARTS_PER_CHUNK = 32


def _pairs_within(
    held: np.ndarray, parts: np.ndarray, max_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (row of ``held``, row of ``parts``, bits apart) at most ``max_bits`` apart, rows of 256-bit
    hashes, in order of ``parts``. Not every pair is compared: cut into ``max_bits`` + 1 bands (at
    least 4, so that a band fits 64 bits), two hashes that close are equal in one band at least
    (pigeonhole), and only pairs equal in a band are compared. Each store image against every
    variant of 2,485 held-out photos took 60 ms: minutes for a store of thousands, growing with
    the product of the two; a band of 20 bits is shared by few pairs that are not copies."""
    bands = max(max_bits + 1, 4)
    width = held.shape[1] * 8
    held_bands, part_bands = [], []
    if bands <= width // 8:  # narrower bands would pair nearly everything: then every pair is compared
        held_bits, part_bits = np.unpackbits(held, axis=1), np.unpackbits(parts, axis=1)
        edges = np.linspace(0, width, bands + 1).round().astype(int)
        for low, high in itertools.pairwise(edges):
            weights = np.left_shift(np.uint64(1), np.arange(high - low, dtype=np.uint64))
            band = held_bits[:, low:high].astype(np.uint64) @ weights
            order = np.argsort(band, kind="stable")
            held_bands.append((order, band[order]))
            part_bands.append(part_bits[:, low:high].astype(np.uint64) @ weights)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for first in range(0, len(parts), _PARTS_PER_CHUNK):
        rows = np.arange(first, min(first + _PARTS_PER_CHUNK, len(parts)))
        if not held_bands:
            held_rows, part_rows = np.repeat(np.arange(len(held)), len(rows)), np.tile(rows, len(held))
        else:
            pairs = [
                _equal_in_band(order, ordered, part_band[rows], rows)
                for (order, ordered), part_band in zip(held_bands, part_bands, strict=True)
            ]
            # A pair equal in two bands is found twice: once is enough.
            ids = np.unique(
                np.concatenate([held_row * len(parts) + part_row for held_row, part_row in pairs])
            )
            held_rows, part_rows = ids // len(parts), ids % len(parts)
        distances = bits_apart(held[held_rows], parts[part_rows])
        close = distances <= max_bits
        found.append((held_rows[close], part_rows[close], distances[close]))
    held_rows, part_rows, distances = (np.concatenate(columns) for columns in zip(*found, strict=True))
    return held_rows, part_rows, distances


def _equal_in_band(
    order: np.ndarray, ordered: np.ndarray, part_band: np.ndarray, part_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(held row, part row) of every pair whose band is equal: ``ordered`` is the held rows' band
    values sorted, ``order`` their rows."""
    starts = np.searchsorted(ordered, part_band, side="left")
    counts = np.searchsorted(ordered, part_band, side="right") - starts
    # Each part's run of equal values in ``ordered``: its start, then one on for each pair.
    steps = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[np.repeat(starts, counts) + steps].astype(np.int64), np.repeat(part_rows, counts)


def _raise(problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise LeakageError(f"held-out photos must not be used for training or scenes: {shown}")


def _canonical(name: str) -> str:
    if "://" in name:
        return name
    return str(Path(name).resolve())
