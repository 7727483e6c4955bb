"""What a product photo and its mask say about the product: dominant colours, packaging shape, view.

Pure numpy, no model weights, so every function is unit-tested without Kafka::

    attributes = describe_product(image, mask)      # RGB photo + 0/255 product mask, same size
    attributes.colour_names     # ["red", "white"]: most dominant first
    attributes.shape            # "can" | "bottle" | "box" | "pouch" | "jar" | "produce" | "other"
    attributes.view             # "front view" | "angled view" | "tilted front view" | ...

Colours: the product's pixels (the mask, eroded so edge pixels mixed with the backdrop stay out)
are clustered with k-means in CIE Lab. Shading scales a surface's RGB, so one printed colour
spreads along a ray from black; clusters on the same ray (same hue and saturation, different
value) are merged, and each group is named from its well-lit colour: its hue and saturation
with the value of its brighter pixels. That keeps the shaded side of a red can red (not brown
or black), and lets black, grey and white be decided by lightness and chroma of lit pixels. On a
photo taken in a shop (a cluttered background), the light's warm cast and dimness are measured on
the background and undone first (``correct_light``): a white carton there read yellow or brown.

Shape: geometric features of the largest mask component, after undoing a small in-plane tilt
(aspect ratio, extent, solidity against a monotone-chain convex hull, the width profile from top
to bottom, left/right symmetry, flatness of the top and bottom edges). Loose fruit and vegetables
("produce") are told from packages by a few of them (``looks_like_produce``: no flat base, less of
the bounding box filled than a package fills, no bottle's neck); packages go through a small decision tree
(``shape_model.SHAPE_TREE``, fitted by ``python -m shared.captioning.fit_shape`` on renderer photos and
on drink-carton silhouettes, which the renderer does not make).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.arith.colour import linear_to_srgb, srgb_to_lab, srgb_to_linear
from shared.arith.masks import (
    connected_components,
    erode,
    hull_mask,
    keep_blobs,
    largest_component,
    mask_hull,
    paint_runs,
    row_spans,
)

__all__ = [
    "ACHROMATIC_CHROMA",
    "BOTTLE_BELOW_ASPECT",
    "BOTTLE_BELOW_NECK",
    "COLOUR_SHADES",
    "COLOUR_TABLE",
    "PACKAGE_SHAPES",
    "PRODUCE_BELOW_BOTTOM_FLATNESS",
    "PRODUCE_BELOW_EXTENT",
    "SHAPE_FEATURES",
    "SHAPE_NAMES",
    "ColourShare",
    "ProductAttributes",
    "ShapeResult",
    "classify_shape",
    "colour_name",
    "colour_spread",
    "describe_product",
    "dominant_colours",
    "fill_concavities",
    "kmeans",
    "looks_like_produce",
    "mask_problem",
    "polygon_area",
    "shape_features",
    "shape_tree_id",
    "view_of",
]

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
ShapeName = Literal["can", "bottle", "box", "pouch", "jar", "produce", "other"]

# --- colour names ------------------------------------------------------------------------------

# Plain names and a typical sRGB value for each chromatic one; black, grey and white are decided
# by lightness alone once a colour's chroma is below ACHROMATIC_CHROMA.
COLOUR_TABLE: Final[Mapping[str, tuple[int, int, int]]] = {
    "red": (205, 35, 40),
    "orange": (240, 135, 30),
    "yellow": (245, 210, 40),
    "green": (40, 150, 70),
    "blue": (35, 85, 190),
    "purple": (125, 55, 160),
    "pink": (240, 125, 175),
    "brown": (120, 75, 40),
}
# More shades each chromatic name covers, besides its typical value: CSS Color 4 named colours that a
# shopper still calls by the basic name. Without them the table's only muted entry, brown, takes
# every muted or dark colour: a grey-blue carton, a dark green cucumber, a brick-red peach.
COLOUR_SHADES: Final[Mapping[str, tuple[tuple[int, int, int], ...]]] = {
    "red": ((178, 34, 34), (205, 92, 92), (128, 0, 0)),  # firebrick, indian red, maroon
    "orange": ((255, 140, 0),),  # dark orange
    "yellow": ((240, 230, 140), (238, 232, 170)),  # khaki, pale goldenrod
    # olive, olive drab, dark olive green, dark sea green, light green
    "green": ((128, 128, 0), (107, 142, 35), (85, 107, 47), (143, 188, 143), (144, 238, 144)),
    # medium blue, navy, steel blue, light steel blue, cornflower blue
    "blue": ((0, 0, 205), (0, 0, 128), (70, 130, 180), (176, 196, 222), (100, 149, 237)),
    # indigo, purple, dark violet, blue violet, medium orchid, thistle (without the violets and the
    # pale thistle, blue's many shades took them: a violet label was "blue")
    "purple": ((75, 0, 130), (128, 0, 128), (148, 0, 211), (138, 43, 226), (186, 85, 211), (216, 191, 216)),
    "pink": ((255, 182, 193), (255, 0, 255), (255, 20, 147)),  # pink, magenta (fuchsia), deep pink
}
ACHROMATIC_NAMES: Final = ("black", "grey", "white")
# Lab chroma below which a (well-lit) colour has no hue worth naming.
ACHROMATIC_CHROMA: Final = 12.0
# Lab lightness cut-offs of well-lit achromatic surfaces: black < 30 <= grey < 70 <= white.
BLACK_BELOW_L: Final = 30.0
WHITE_FROM_L: Final = 70.0
# Lightness counts half as much as hue when naming: lit and shaded prints of one ink must match.
NAMING_LIGHTNESS_WEIGHT: Final = 0.5

# One row per prototype: each name's typical value, then its shades.
_PROTOTYPES: Final = [
    (name, rgb) for name in COLOUR_TABLE for rgb in (COLOUR_TABLE[name], *COLOUR_SHADES.get(name, ()))
]
_CHROMATIC_NAMES: Final = tuple(name for name, _ in _PROTOTYPES)
_CHROMATIC_LAB: Final[F32Array] = srgb_to_lab(np.array([rgb for _, rgb in _PROTOTYPES], dtype=np.float32))


def colour_name(rgb: npt.ArrayLike) -> str:
    """The plain name of one well-lit sRGB colour (0-255).

    Chroma below ``ACHROMATIC_CHROMA`` makes it black, grey or white by lightness; otherwise it is
    the name of the nearest chromatic prototype in Lab (a ``COLOUR_TABLE`` value or one of its
    ``COLOUR_SHADES``), lightness weighted by half.
    """
    lab = srgb_to_lab(np.asarray(rgb, dtype=np.float32).reshape(3))
    lightness, chroma = float(lab[0]), float(np.hypot(lab[1], lab[2]))
    if chroma < ACHROMATIC_CHROMA:
        if lightness < BLACK_BELOW_L:
            return "black"
        return "grey" if lightness < WHITE_FROM_L else "white"
    delta = _CHROMATIC_LAB - lab
    distance = (delta[:, 0] * NAMING_LIGHTNESS_WEIGHT) ** 2 + delta[:, 1] ** 2 + delta[:, 2] ** 2
    return _CHROMATIC_NAMES[int(np.argmin(distance))]


# Clusters are one ink when hues differ by at most this (fraction of the hue circle, ~14 degrees)...
MAX_INK_HUE_GAP: Final = 0.04
# ...both are at least this saturated, and saturations differ by at most this (lit vs shaded);
MIN_INK_SATURATION: Final = 0.3
MAX_INK_SATURATION_GAP: Final = 0.15
# a brighter, paler cluster of that hue (saturation at least this) is the ink's specular highlight.
MIN_HIGHLIGHT_SATURATION: Final = 0.08

# --- shop light --------------------------------------------------------------------------------

# A shop's light is warm or green and dimmer than a studio's: a white carton read yellow, brown or
# grey, an orange one brown. The background around the product (shelves, other products, the hand)
# averages to about grey in the light's colour (grey world), and its bright part shows how far the
# exposure is from a lit white. Both are undone on linear RGB before naming; tuned on in-store photos
# of GroceryStoreDataset's train split (python -m bench.caption_colours), not on val or test.
# Only this much of the grey-world gain is applied: the background is not truly grey (skin, produce).
WHITE_BALANCE_STRENGTH: Final = 0.75
# No channel is scaled by more than this (or less than its inverse): a wall of carrots is no grey.
MAX_WHITE_BALANCE_GAIN: Final = 1.5
# Exposure: the background's 90th-percentile brightest channel is raised towards full scale, by at
# most this; never darkened (a white studio backdrop is left as it is).
EXPOSURE_QUANTILE: Final = 0.9
MAX_EXPOSURE_GAIN: Final = 1.5
# Background pixels this far (px) from the product, and at least this many, or nothing is corrected:
# a mask that fills the frame leaves nothing to measure the light on.
BACKGROUND_CLEARANCE_PX: Final = 5
# Only a cluttered background (a shop's) is grey on average: a plain one is a backdrop of any colour
# (a catalogue's white, a renderer's studio sweep), and its colour is no light's. The captioner's
# plain-backdrop cut-off (shared.generation.backend.PLAIN_BACKGROUND_FROM), written here as a model
# library does not import another (tests/test_layout.py); tests/test_captioner_attributes.py holds the
# two equal.
NEUTRAL_LIGHT_BELOW_PLAIN_BACKGROUND: Final = 0.7
MIN_BACKGROUND_PIXELS: Final = 100


def light_gains(image: npt.NDArray[np.uint8], mask: BoolArray) -> F32Array:
    """Per-channel gains on linear RGB that undo the light's colour cast and dimness, measured on
    the photo's background (outside ``mask``); ones when too little background shows.

    Nothing is corrected on a plain background (a backdrop's colour is its own) nor where the
    background's average is not warm. The cast is grey world on its neither black nor clipped
    pixels, applied at ``WHITE_BALANCE_STRENGTH`` and clipped to ``MAX_WHITE_BALANCE_GAIN``; the
    exposure gain lifts
    the background's ``EXPOSURE_QUANTILE`` brightest channel towards 1, by at most ``MAX_EXPOSURE_GAIN``.
    """
    background = erode(~mask, BACKGROUND_CLEARANCE_PX)
    if np.count_nonzero(background) < MIN_BACKGROUND_PIXELS or (
        plain_background_share(Image.fromarray(image), mask) >= NEUTRAL_LIGHT_BELOW_PLAIN_BACKGROUND
    ):
        return np.ones(3, dtype=np.float32)
    linear = srgb_to_linear(image[background])
    brightest = linear.max(axis=1)
    usable = linear[(brightest > 0.02) & (brightest < 0.95)]
    if usable.shape[0] < MIN_BACKGROUND_PIXELS:
        return np.ones(3, dtype=np.float32)
    light = np.maximum(usable.mean(axis=0), 1e-6)
    # Shop light is warm or neutral (red >= green >= blue); a background that is not is the colour of
    # the products on it (a wall of magenta packs), not of the light: left alone.
    if not light[0] >= light[1] >= light[2]:
        return np.ones(3, dtype=np.float32)
    balance = np.clip(
        (light.mean() / light) ** WHITE_BALANCE_STRENGTH, 1 / MAX_WHITE_BALANCE_GAIN, MAX_WHITE_BALANCE_GAIN
    )
    level = float(np.quantile((linear * balance).max(axis=1), EXPOSURE_QUANTILE))
    exposure = float(np.clip(1.0 / max(level, 1e-6), 1.0, MAX_EXPOSURE_GAIN))
    gains: F32Array = (balance * exposure).astype(np.float32)
    return gains


def correct_light(image: npt.NDArray[np.uint8], mask: BoolArray) -> npt.NDArray[np.uint8]:
    """``image`` (HxWx3 uint8) as under neutral, full light: ``light_gains`` applied on linear RGB."""
    gains = light_gains(image, mask)
    if np.allclose(gains, 1.0):
        return image
    return linear_to_srgb(srgb_to_linear(image) * gains)


# --- k-means -----------------------------------------------------------------------------------


def kmeans(
    points: npt.ArrayLike, k: int, *, iterations: int = 30, seed: int = 0
) -> tuple[F32Array, IntArray]:
    """Lloyd's k-means with k-means++ initialisation from a fixed seed: same points, same answer.

    Returns ``(centres, labels)``; clusters that end up empty are dropped and labels renumbered,
    so there may be fewer than ``k`` centres (always at least one for non-empty input).
    """
    data = np.asarray(points, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) array, got shape {data.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    centres = [data[int(rng.integers(data.shape[0]))]]
    nearest = np.sum((data - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 0.0:
            break  # every point coincides with a centre already
        index = int(np.searchsorted(np.cumsum(nearest), rng.random() * total, side="right"))
        centres.append(data[min(index, data.shape[0] - 1)])
        nearest = np.minimum(nearest, np.sum((data - centres[-1]) ** 2, axis=1))
    centre_array = np.stack(centres).astype(np.float32)

    squared_norms = np.sum(data * data, axis=1, keepdims=True)
    labels = np.full(data.shape[0], -1, dtype=np.intp)
    for _ in range(iterations):
        distances = squared_norms - 2.0 * data @ centre_array.T + np.sum(centre_array**2, axis=1)
        new_labels = np.argmin(distances, axis=1).astype(np.intp)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=centre_array.shape[0]).astype(np.float32)
        sums = np.zeros_like(centre_array)
        np.add.at(sums, labels, data)
        filled = counts > 0
        centre_array[filled] = sums[filled] / counts[filled, None]
    used = np.unique(labels)
    renumber = np.full(centre_array.shape[0], -1, dtype=np.intp)
    renumber[used] = np.arange(used.size)
    return centre_array[used], renumber[labels]


# --- dominant colours --------------------------------------------------------------------------


@dataclass(frozen=True)
class ColourShare:
    """One named colour of the product: its share of the product's pixels and its well-lit sRGB."""

    name: str
    share: float
    rgb: tuple[int, int, int]


def _hsv(rgb01: F32Array) -> tuple[F32Array, F32Array, F32Array]:
    """Hue in [0, 1), saturation and value of Nx3 sRGB in [0, 1]."""
    value = rgb01.max(axis=1)
    spread = value - rgb01.min(axis=1)
    saturation = np.where(value > 0, spread / np.maximum(value, 1e-6), 0.0).astype(np.float32)
    r, g, b = rgb01[:, 0], rgb01[:, 1], rgb01[:, 2]
    safe = np.maximum(spread, 1e-6)
    hue = np.where(
        value == r, (g - b) / safe, np.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    hue = np.where(spread > 0, (hue / 6.0) % 1.0, 0.0).astype(np.float32)
    return hue, saturation, value.astype(np.float32)


def _product_pixels(image: npt.NDArray[np.uint8], mask: BoolArray, max_pixels: int) -> npt.NDArray[np.uint8]:
    """The product's pixels away from its outline, subsampled on a regular stride (deterministic)."""
    area = int(np.count_nonzero(mask))
    # Erode by ~2% of the product's size: matting edges blend in backdrop, shading darkens rims.
    core = erode(mask, max(1, round(0.02 * math.sqrt(area)))) if area else mask
    if np.count_nonzero(core) < max(64, area // 8):
        core = mask
    pixels = image[core]
    if pixels.shape[0] > max_pixels:
        pixels = pixels[:: math.ceil(pixels.shape[0] / max_pixels)]
    return pixels


def _lit_colour(rgb01: F32Array) -> F32Array:
    """The colour a group of pixels of one print has where it is well lit.

    Shading scales RGB, so the value-normalised colour (RGB / max) is the same lit or shaded: take
    its median over mid-to-bright pixels (not the darkest, noisy ones nor specular highlights),
    then scale it to the value of the group's brighter pixels.
    """
    value = rgb01.max(axis=1)
    low, high, lit = np.quantile(value, [0.25, 0.95, 0.85])
    body = (value >= low) & (value <= high)
    if np.count_nonzero(body) < 4:
        body = np.ones_like(value, dtype=bool)
    normalised = rgb01[body] / np.maximum(value[body], 1e-6)[:, None]
    colour: F32Array = (np.median(normalised, axis=0) * lit).astype(np.float32)
    return colour


def _group_clusters(labels: IntArray, rgb01: F32Array, n_clusters: int) -> tuple[IntArray, BoolArray]:
    """Group the k-means clusters that are one ink under different light; returns per pixel
    (group label, whether its cluster is a specular highlight of the group).

    Shading scales RGB and keeps hue and saturation; a specular highlight (a screen blend towards
    white) keeps hue, raises value and lowers saturation. So two clearly chromatic clusters of
    close hue are one ink when their saturations match (lit and shaded), or when one is brighter
    and paler than the other (its highlight).
    """
    hue, saturation, value = _hsv(rgb01)
    mean_hue = np.zeros(n_clusters)
    median_saturation = np.zeros(n_clusters)
    median_value = np.zeros(n_clusters)
    for cluster in range(n_clusters):
        members = labels == cluster
        angle = hue[members] * 2.0 * np.pi
        weights = saturation[members] + 1e-6
        mean_hue[cluster] = (
            np.arctan2((np.sin(angle) * weights).sum(), (np.cos(angle) * weights).sum()) / (2 * np.pi)
        ) % 1.0
        median_saturation[cluster] = float(np.median(saturation[members]))
        median_value[cluster] = float(np.median(value[members]))
    hue_gap = np.abs(mean_hue[:, None] - mean_hue[None, :])
    close_hue = np.minimum(hue_gap, 1.0 - hue_gap) <= MAX_INK_HUE_GAP
    ink = median_saturation >= MIN_INK_SATURATION
    same_ink = (
        close_hue
        & (np.abs(median_saturation[:, None] - median_saturation[None, :]) <= MAX_INK_SATURATION_GAP)
        & ink[:, None]
        & ink[None, :]
    )
    # highlight_of[j, i]: cluster j is a highlight on ink cluster i.
    highlight_of = (
        close_hue
        & ink[None, :]
        & (median_saturation[:, None] >= MIN_HIGHLIGHT_SATURATION)
        & (median_saturation[:, None] < median_saturation[None, :] - MAX_INK_SATURATION_GAP)
        & (median_value[:, None] > median_value[None, :])
    )
    related = same_ink | highlight_of | highlight_of.T
    # Connected components of the relation (k is tiny): repeated min-label propagation.
    group = np.arange(n_clusters)
    for _ in range(n_clusters):
        updated = np.minimum(group, np.where(related, group[None, :], n_clusters).min(axis=1))
        if np.array_equal(updated, group):
            break
        group = updated
    is_highlight: BoolArray = np.asarray(highlight_of.any(axis=1), dtype=bool)
    grouped: IntArray = group[labels]
    return grouped, is_highlight[labels]


def dominant_colours(
    image: Image.Image | npt.NDArray[np.uint8],
    mask: npt.ArrayLike,
    *,
    k: int = 5,
    max_pixels: int = 6000,
    min_share: float = 0.04,
) -> list[ColourShare]:
    """The product's colour names, most dominant first, each with its share of product pixels.

    ``mask`` is HxW (bool or 0/255) at the image's size. Names under ``min_share`` are dropped;
    an empty mask gives an empty list. The colours are named as under neutral, full light
    (``correct_light``, measured on the photo outside the mask).
    """
    pixels_rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    product = np.asarray(mask) > 0
    if product.shape != pixels_rgb.shape[:2]:
        raise ValueError(f"mask is {product.shape}, the image is {pixels_rgb.shape[:2]}")
    pixels_rgb = correct_light(pixels_rgb, product)
    pixels = _product_pixels(pixels_rgb, product, max_pixels)
    if pixels.shape[0] == 0:
        return []
    _, labels = kmeans(srgb_to_lab(pixels), k)
    rgb01 = pixels.astype(np.float32) / 255.0
    groups, highlight = _group_clusters(labels, rgb01, int(labels.max()) + 1)
    shares: dict[str, float] = {}
    weighted_rgb: dict[str, F64Array] = {}
    for group in np.unique(groups):
        members = groups == group
        share = float(np.count_nonzero(members)) / pixels.shape[0]
        # The ink's colour comes from its own pixels; its highlights only add to its share.
        ink = members & ~highlight
        lit = _lit_colour(rgb01[ink if ink.any() else members]) * 255.0
        name = colour_name(lit)
        shares[name] = shares.get(name, 0.0) + share
        weighted_rgb[name] = weighted_rgb.get(name, np.zeros(3)) + lit.astype(np.float64) * share
    ranked = sorted(shares, key=lambda name: (-shares[name], name))
    return [
        ColourShare(
            name=name,
            share=round(shares[name], 4),
            rgb=cast(tuple[int, int, int], tuple(round(float(v)) for v in weighted_rgb[name] / shares[name])),
        )
        for name in ranked
        if shares[name] >= min_share
    ]


# --- mask geometry -----------------------------------------------------------------------------


def polygon_area(points: npt.ArrayLike) -> float:
    """Area of a simple polygon given as (N, 2) vertices in order (shoelace formula)."""
    vertices = np.asarray(points, dtype=np.float64)
    if vertices.shape[0] < 3:
        return 0.0
    x, y = vertices[:, 0], vertices[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


MAIN_BLOB_SHARE: Final = 0.15


def fill_concavities(mask: BoolArray, min_share: float) -> tuple[BoolArray, float]:
    """The mask with every dent that covers at least ``min_share`` of its area filled, and the share
    of its area that was added.

    A dent is a 4-connected piece of the convex hull of the mask's main blobs outside the mask. A
    carton, box or can seen from any side has a convex outline (a convex solid projects to a convex
    shape); a big dent in its mask is a part the matting model dropped, typically a white face on a
    white backdrop. Small dents are left: the shoulders beside a screw cap, a gable top's notch. The
    hull is that of the blobs holding at least ``MAIN_BLOB_SHARE`` of the mask, not of every blob: a
    badge or a glass apart from the carton would otherwise join it across the backdrop, while the two
    halves of a carton whose white band the model dropped are both main blobs. A dent is filled only
    as far as the hull reaches: a face the model dropped at a corner of the outline comes back in part.
    """
    if not mask.any():
        return mask.copy(), 0.0
    # The hull of the blobs holding MAIN_BLOB_SHARE of the mask or more (the largest always).
    dents = hull_mask(keep_blobs(mask, MAIN_BLOB_SHARE * np.count_nonzero(mask))) & ~mask
    if not dents.any():
        return mask.copy(), 0.0
    area = float(np.count_nonzero(mask))
    rows, starts, ends, labels = connected_components(dents, diagonal=False)
    sizes = np.bincount(labels, weights=(ends - starts).astype(np.float64))
    big = sizes >= min_share * area
    filled = mask.copy()
    if big.any():
        keep = big[labels]
        height, width = mask.shape
        filled |= paint_runs((height, width), rows[keep], starts[keep], ends[keep])
    return filled, float(sizes[big].sum()) / area


def mask_hull_area(mask: BoolArray) -> float:
    """Area of the convex hull of a mask's pixels, as squares (so a full rectangle gives w*h)."""
    if not mask.any():
        return 0.0
    return polygon_area(mask_hull(mask))


def tilt_degrees(mask: BoolArray) -> float:
    """In-plane tilt of the mask in degrees, positive clockwise, in [-45, 45].

    The angle of the minimum-area rectangle around the mask's convex hull (one of the hull's edge
    directions): packaging has long straight or gently curved sides, which that rectangle follows,
    while second moments would follow the diagonal of a box seen from an angle.
    """
    if not mask.any():
        return 0.0
    hull = mask_hull(mask)
    if hull.shape[0] < 3:
        return 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.arctan2(edges[:, 1], edges[:, 0]) % (np.pi / 2)
    cos, sin = np.cos(angles), np.sin(angles)
    # Hull points in each candidate frame, all candidates at once: (edges, points).
    along = hull[None, :, 0] * cos[:, None] + hull[None, :, 1] * sin[:, None]
    across = -hull[None, :, 0] * sin[:, None] + hull[None, :, 1] * cos[:, None]
    areas = np.ptp(along, axis=1) * np.ptp(across, axis=1)
    # Among near-equal areas (a rectangle has four), prefer the smallest rotation: no tilt wins ties.
    folded = (np.degrees(angles) + 45.0) % 90.0 - 45.0
    best = int(np.lexsort((np.abs(folded), np.round(areas / areas.min(), 3)))[0])
    return float(folded[best])


def _deskew(mask: BoolArray, degrees: float) -> BoolArray:
    """The mask rotated by ``-degrees`` (undoing the tilt) and cropped to its bounding box."""
    image = Image.fromarray(np.where(mask, np.uint8(255), np.uint8(0)))
    if abs(degrees) >= 0.5:
        image = image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=True)
    upright = np.asarray(image) >= 128
    rows, cols = np.flatnonzero(upright.any(axis=1)), np.flatnonzero(upright.any(axis=0))
    if rows.size == 0:
        return upright
    return upright[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


# Relative heights (0 = top, 1 = bottom) where the width profile is sampled.
PROFILE_HEIGHTS: Final = (0.03, 0.08, 0.15, 0.25, 0.35, 0.5, 0.65, 0.8, 0.92, 0.97)
SHAPE_FEATURES: Final[tuple[str, ...]] = (
    "aspect",
    "extent",
    "solidity",
    *(f"width_{round(h * 100):02d}" for h in PROFILE_HEIGHTS),
    "neck",
    "waist_dip",
    "width_trend",
    "side_straightness",
    "mirror_iou",
    "top_flatness",
    "bottom_flatness",
    "bottom_vertex_offset",
    "top_vertex_offset",
    "elongation",
)


def shape_features(mask: npt.ArrayLike) -> dict[str, float]:
    """Scale-free geometry of the largest blob of ``mask``, after undoing a small in-plane tilt.

    Widths are spans of the blob's rows divided by its widest (95th-percentile) row. Raises
    ``ValueError`` for an empty mask, and for one too thin to survive being straightened.
    """
    blob = largest_component(mask)
    if not blob.any():
        raise ValueError("the mask is empty: no shape to describe")
    upright = _deskew(blob, tilt_degrees(blob))
    if not upright.any():
        # Straightening resamples the mask: a slanted line about a pixel wide falls below half
        # everywhere, which left nothing to measure (and a NaN in a traceback further down).
        raise ValueError(f"the mask is too thin to measure ({np.count_nonzero(blob)} pixels)")
    height, width = upright.shape
    area = float(np.count_nonzero(upright))
    rows, first, last = row_spans(upright)
    spans = np.zeros(height, dtype=np.float64)
    spans[rows] = last - first
    reference = float(np.quantile(spans, 0.95)) or 1.0
    relative = spans / reference
    centres = (np.arange(height) + 0.5) / height

    def width_at(lo: float, hi: float) -> F64Array:
        chosen = relative[(centres >= lo) & (centres <= hi)]
        return chosen if chosen.size else np.interp([(lo + hi) / 2], centres, relative)

    profile = np.interp(PROFILE_HEIGHTS, centres, relative)
    body = width_at(0.4, 0.9)
    body_median = float(np.median(body)) or 1.0
    mirrored = upright[:, ::-1]
    # Mirror about the centroid column, not the box centre, so a box's side face reads as asymmetry.
    shift = round(2 * (float(np.nonzero(upright)[1].mean()) - (width - 1) / 2))
    mirrored = np.roll(mirrored, shift, axis=1)
    if shift > 0:
        mirrored[:, :shift] = False
    elif shift < 0:
        mirrored[:, shift:] = False
    union = np.count_nonzero(upright | mirrored)
    mirror_iou = np.count_nonzero(upright & mirrored) / union if union else 1.0

    columns = np.flatnonzero(upright.any(axis=0))
    top_edge = np.argmax(upright[:, columns], axis=0)
    bottom_edge = height - 1 - np.argmax(upright[::-1, columns], axis=0)
    central = np.abs((columns + 0.5) / width - 0.5) <= 0.4
    tolerance = max(1.0, 0.03 * height)
    top_flatness = float(np.mean(top_edge[central] <= top_edge.min() + tolerance)) if central.any() else 0.0
    bottom_flatness = (
        float(np.mean(bottom_edge[central] >= bottom_edge.max() - tolerance)) if central.any() else 0.0
    )
    centroid_x = float(np.nonzero(upright)[1].mean())
    lowest = columns[bottom_edge >= bottom_edge.max() - max(1.0, 0.01 * height)]
    highest = columns[top_edge <= top_edge.min() + max(1.0, 0.01 * height)]
    ys, xs = np.nonzero(upright)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) if xs.size > 2 else np.eye(2)
    eigen = np.linalg.eigvalsh(cov)

    features = {
        "aspect": width / height,
        "extent": area / (width * height),
        "solidity": area / max(mask_hull_area(upright), 1.0),
        **{f"width_{round(h * 100):02d}": float(v) for h, v in zip(PROFILE_HEIGHTS, profile, strict=True)},
        "neck": float(width_at(0.03, 0.3).min()) / body_median,
        "waist_dip": float(width_at(0.0, 0.12).max() - width_at(0.08, 0.35).min()),
        "width_trend": float(np.median(width_at(0.75, 0.9)) - np.median(width_at(0.25, 0.4))),
        "side_straightness": float(np.std(width_at(0.3, 0.85))),
        "mirror_iou": float(mirror_iou),
        "top_flatness": top_flatness,
        "bottom_flatness": bottom_flatness,
        "bottom_vertex_offset": abs(float(np.median(lowest)) - centroid_x) / width,
        "top_vertex_offset": abs(float(np.median(highest)) - centroid_x) / width,
        "elongation": float(math.sqrt(max(eigen[1], 1e-9) / max(eigen[0], 1e-9))),
    }
    return {name: round(float(features[name]), 6) for name in SHAPE_FEATURES}


# --- shape classification ----------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeResult:
    """The packaging shape and the decision tree leaf's class shares (how sure it is)."""

    shape: ShapeName
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)


# The packaging shapes the decision tree knows (the renderer's); "produce" comes from a rule before it.
PACKAGE_SHAPES: Final[tuple[ShapeName, ...]] = ("can", "bottle", "box", "pouch", "jar")
SHAPE_NAMES: Final[tuple[ShapeName, ...]] = (*PACKAGE_SHAPES, "produce", "other")

# Loose produce: a round or irregular thing fills about pi/4 (0.785) of its bounding box and has no
# flat base. Packages fill at least 0.87 of theirs, except bottles (~0.8: the neck leaves the top
# corners empty), and those stand on a flat base (bottom flatness >= 0.95 on renderer masks, where
# boxes seen corner-on dip to 0.35 but fill >= 0.88). The cut-offs were set looking at renderer
# masks of the tree's fitting catalogue (none of 240 exact masks below both; 3 of 240 U2-NetP masks,
# each a broken one) and at the 81 GroceryStoreDataset catalogue photos (48 of 50 fruit and
# vegetables below both; one carton, whose mask lost half of it): that real figure is not held out.
PRODUCE_BELOW_EXTENT: Final = 0.85
PRODUCE_BELOW_BOTTOM_FLATNESS: Final = 0.8
# A tall silhouette with a narrow neck is a bottle whatever its base: a bottle in front of another
# product can lose its flat base in the mask. Renderer bottles: aspect <= 0.36, neck 0.2-0.35; tall
# produce (cucumber, leek, asparagus) has no such neck (>= 0.6).
BOTTLE_BELOW_ASPECT: Final = 0.4
BOTTLE_BELOW_NECK: Final = 0.45


def looks_like_produce(features: Mapping[str, float]) -> bool:
    """Whether ``shape_features`` describe a loose fruit or vegetable rather than a package."""
    bottle_like = features["aspect"] < BOTTLE_BELOW_ASPECT and features["neck"] < BOTTLE_BELOW_NECK
    return (
        features["extent"] < PRODUCE_BELOW_EXTENT
        and features["bottom_flatness"] < PRODUCE_BELOW_BOTTOM_FLATNESS
        and not bottle_like
    )


def classify_shape(features: Mapping[str, float], tree: Mapping[str, Any] | None = None) -> ShapeResult:
    """The shape ``shape_features`` output describes: "produce" when ``looks_like_produce``, else
    the committed decision tree's (or ``tree``'s) packaging shape.

    A tree is ``{"classes": [...], "nodes": [...]}``; an inner node is
    ``{"feature", "threshold", "left", "right"}`` (left when ``value <= threshold``), a leaf is
    ``{"counts": [...]}`` with the training samples of each class that reached it. A leaf whose
    majority share is below the tree's ``min_confidence`` answers "other".
    """
    if looks_like_produce(features):
        return ShapeResult(shape="produce", confidence=1.0, probabilities={"produce": 1.0})
    if tree is None:
        from shared.captioning.shape_model import SHAPE_TREE

        tree = SHAPE_TREE
    classes: list[str] = list(tree["classes"])
    nodes: list[dict[str, Any]] = list(tree["nodes"])
    node = nodes[0]
    while "counts" not in node:
        value = float(features[node["feature"]])
        node = nodes[node["left"] if value <= float(node["threshold"]) else node["right"]]
    counts = np.asarray(node["counts"], dtype=np.float64)
    shares = counts / max(counts.sum(), 1.0)
    best = int(np.argmax(shares))
    probabilities = {name: round(float(share), 4) for name, share in zip(classes, shares, strict=True)}
    shape = cast(ShapeName, classes[best])
    if shares[best] < float(tree.get("min_confidence", 0.0)) or shape not in SHAPE_NAMES:
        shape = "other"
    return ShapeResult(shape=shape, confidence=round(float(shares[best]), 4), probabilities=probabilities)


def shape_tree_id(tree: Mapping[str, Any] | None = None) -> str:
    """Short sha256 of a shape tree (default: the committed one), for the captioner id (lineage)."""
    if tree is None:
        from shared.captioning.shape_model import SHAPE_TREE

        tree = SHAPE_TREE
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


# --- view --------------------------------------------------------------------------------------

TILTED_FROM_DEGREES: Final = 8.0
# Below this left/right mirror IoU the silhouette is lopsided: two faces show, or the camera is off-axis.
ANGLED_BELOW_MIRROR_IOU: Final = 0.93


def view_of(tilt: float, mirror_iou: float) -> str:
    """A plain view phrase from what the mask shows: tilt and left/right symmetry of the silhouette."""
    view = "angled view" if mirror_iou < ANGLED_BELOW_MIRROR_IOU else "front view"
    return f"tilted {view}" if abs(tilt) >= TILTED_FROM_DEGREES else view


# --- photos with no product ---------------------------------------------------------------------


def colour_spread(image: Image.Image, *, thumbnail_px: int = 128) -> float:
    """How much a photo's colours vary: the largest 0.1th-to-99.9th percentile range of L, a and b.

    Measured on a box-filtered thumbnail, so sensor noise averages out and a blank photo reads ~0.
    The tails cut are well under the smallest product the captioner takes (``captioner_min_mask_fraction``,
    0.5% of the photo): with the 1st-99th percentiles on a 64 px thumbnail, a product on 0.5-1% of a
    plain backdrop fell in the cut tail, and its photo was refused as one flat colour.
    """
    small = image.convert("RGB")
    if max(small.size) > thumbnail_px:
        small = small.copy()
        small.thumbnail((thumbnail_px, thumbnail_px), Image.Resampling.BOX)
    lab = srgb_to_lab(np.asarray(small, dtype=np.uint8).reshape(-1, 3))
    low, high = np.quantile(lab, [0.001, 0.999], axis=0)
    return float(np.max(high - low))


def plain_background_share(image: Image.Image, mask: npt.ArrayLike, *, thumbnail_px: int = 128) -> float:
    """Share of the background (outside the product, 3 px clear of it) within RGB distance 40 of the
    median colour of the photo's border outside the product (the whole border where the product covers
    all of it): ~1 on a catalogue photo, below 0.6 on an in-store one.

    Where the background is cluttered, a saliency matting model is often wrong about what the product
    is (a hand, the next item); the generator composites from plain-background photos first.
    """
    size = (thumbnail_px, thumbnail_px)
    pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX), dtype=np.float32)
    product = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize(size)) > 0
    background = erode(~product, 3)  # clear of the product by 3 px (and of the frame's edge)
    if not background.any():
        return 0.0
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    # The backdrop is what borders the frame outside the product: a close-up running off three sides
    # made the product's own colour the median, and a white backdrop read 0% plain.
    outside = ~np.concatenate([product[0], product[-1], product[:, 0], product[:, -1]])
    if outside.any():
        border = border[outside]
    distance = np.linalg.norm(pixels - np.median(border, axis=0), axis=2)
    return float(np.count_nonzero(distance[background] < 40.0)) / float(np.count_nonzero(background))


# The reasons ``mask_problem`` gives: the photo is a good picture, only its mask is not a product's (a
# pile of loose produce filling the frame). Useless as a compositing reference; still a real photo
# of the product for a classifier (the trainstore keeps it, without a mask).
MASK_PROBLEMS: Final = frozenset({"no_product_found", "mask_full_frame"})


def mask_problem(mask: npt.ArrayLike, *, min_fraction: float, max_fraction: float) -> str | None:
    """Why a predicted mask shows no product, or None when it may: too little, or the whole frame.

    ``no_product_found`` below ``min_fraction`` of the photo (or empty, even where ``min_fraction`` is
    0), ``mask_full_frame`` above ``max_fraction`` (a saliency model that finds nothing salient tends to
    light up everything).
    """
    product = np.asarray(mask) > 0
    fraction = float(np.count_nonzero(product)) / max(product.size, 1)
    if fraction == 0 or fraction < min_fraction:
        return "no_product_found"
    if fraction > max_fraction:
        return "mask_full_frame"
    return None


# --- all together ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductAttributes:
    """Everything measured on one photo of a product."""

    colours: list[ColourShare]
    shape: ShapeResult
    view: str
    tilt_degrees: float
    mask_fraction: float
    features: dict[str, float]

    @property
    def colour_names(self) -> list[str]:
        """Colour names, most dominant first."""
        return [colour.name for colour in self.colours]


def describe_product(
    image: Image.Image | npt.NDArray[np.uint8],
    mask: npt.ArrayLike,
    *,
    k: int = 5,
    max_pixels: int = 6000,
    min_colour_share: float = 0.04,
    max_side_px: int = 1024,
    tree: Mapping[str, Any] | None = None,
) -> ProductAttributes:
    """Colours, shape and view of the product ``mask`` marks in ``image`` (mask must not be empty).

    Photos larger than ``max_side_px`` are measured on a reduced copy: the features are scale-free,
    and a 12-megapixel phone photo then costs what a 1-megapixel one does.
    """
    product = np.asarray(mask) > 0
    pixels = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    if pixels.size != (product.shape[1], product.shape[0]):
        raise ValueError(f"mask is {product.shape}, the image is {pixels.size[::-1]}")
    mask_fraction = float(np.count_nonzero(product)) / product.size
    if max(pixels.size) > max_side_px:
        scale = max_side_px / max(pixels.size)
        size = (max(1, round(pixels.width * scale)), max(1, round(pixels.height * scale)))
        pixels = pixels.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        reduced = np.asarray(Image.fromarray(product).resize(size, Image.Resampling.NEAREST))
        if not reduced.any():
            # A product a few pixels thin can fall between the samples: keep every pixel it touches.
            touched = Image.fromarray(product.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
            reduced = np.asarray(touched) > 0
        product = reduced
    blob = largest_component(product)
    features = shape_features(blob)
    tilt = tilt_degrees(blob)
    return ProductAttributes(
        colours=dominant_colours(pixels, blob, k=k, max_pixels=max_pixels, min_share=min_colour_share),
        shape=classify_shape(features, tree),
        view=view_of(tilt, features["mirror_iou"]),
        tilt_degrees=round(tilt, 2),
        mask_fraction=round(mask_fraction, 6),
        features=features,
    )
