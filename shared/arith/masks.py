"""Mask arithmetic: connected components by runs, painting runs back, blob and hole clean-up, erosion,
convex hulls, solidity.

Masks are HxW arrays, boolean (True = product) or of numbers where above 0 is product (a 0/255 mask as
images are read); masks returned are boolean. ``mask_on`` and ``mask_iou`` alone read a mask of numbers
as a model's soft 0..255 output, on from 128, the way ``decode_mask`` thresholds. The matting
post-processing (``clean_mask``), the captioner's shape features (``largest_component``, ``erode``, the
hulls), the real-photo pair builder (``hull_mask``), and the gate's check and the matting evaluation
(``mask_iou``) all use these, so they live below the model libraries.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "clean_mask",
    "connected_components",
    "convex_hull",
    "erode",
    "hull_mask",
    "keep_blobs",
    "largest_component",
    "mask_hull",
    "mask_iou",
    "mask_on",
    "paint_runs",
    "row_spans",
    "solidity",
]

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
F64Array = npt.NDArray[np.float64]


def connected_components(
    mask: npt.ArrayLike, *, diagonal: bool
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Label the connected components of an HxW mask (above 0 is product), run by run.

    Returns ``(rows, starts, ends, labels)``: one entry per horizontal run of True pixels
    (columns ``starts[i]`` to ``ends[i] - 1`` of row ``rows[i]``), and the component (0..k-1) it
    belongs to. ``diagonal`` selects 8-connectivity, else 4. Runs, not pixels, are the unit, so
    a 512x512 product mask is a few thousand nodes; their union is found with vectorised
    hooking and pointer jumping instead of a per-pixel Python flood fill.
    """
    product = np.asarray(mask) > 0  # 255 copied into the int8 below was -1, and every run came back reversed
    height, width = product.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = product
    steps = np.diff(padded, axis=1)
    # np.nonzero walks row-major, so the k-th start and the k-th end belong to the same run.
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    count = rows.size
    if count == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, empty, empty

    # Runs touching run a in the next row form one contiguous range of the (row, column)-sorted
    # runs: those starting before a's end (+1 if diagonal) and ending after a's start (-1).
    reach = 1 if diagonal else 0
    stride = width + 2  # > any column, so row * stride + column orders runs row-major
    start_key = rows * stride + starts
    end_key = rows * stride + ends
    first = np.searchsorted(end_key, (rows + 1) * stride + starts - reach, side="right")
    stop = np.searchsorted(start_key, (rows + 1) * stride + ends + reach, side="left")
    degree = np.maximum(stop - first, 0)
    upper = np.repeat(np.arange(count), degree)
    lower = np.arange(upper.size) - np.repeat(np.cumsum(degree) - degree, degree) + np.repeat(first, degree)

    parent = np.arange(count)
    while True:
        root_a, root_b = parent[upper], parent[lower]
        differ = root_a != root_b
        if not differ.any():
            break
        # Hook the larger root under the smaller one: parent[i] <= i always, so no cycles.
        np.minimum.at(
            parent, np.maximum(root_a[differ], root_b[differ]), np.minimum(root_a[differ], root_b[differ])
        )
        while True:
            grandparent = parent[parent]
            if np.array_equal(grandparent, parent):
                break
            parent = grandparent
    _, labels = np.unique(parent, return_inverse=True)
    return rows, starts, ends, labels.astype(np.intp)


def paint_runs(shape: tuple[int, int], rows: IntArray, starts: IntArray, ends: IntArray) -> BoolArray:
    """A boolean mask with the given runs set; runs never overlap or touch, so no index repeats."""
    height, width = shape
    edges = np.zeros((height, width + 1), dtype=np.int16)
    edges[rows, starts] += 1
    edges[rows, ends] -= 1
    return np.cumsum(edges, axis=1, dtype=np.int16)[:, :width] > 0


def clean_mask(mask: BoolArray, min_blob_fraction: float) -> BoolArray:
    """Drop product blobs under ``min_blob_fraction`` of the image and fill holes in what is left.

    The largest blob is always kept, so a small product is never erased. Blobs are
    8-connected; holes are background regions (4-connected, the complement's topology) that
    do not touch the image border.
    """
    height, width = mask.shape
    cleaned = keep_blobs(mask, min_blob_fraction * mask.size)

    rows, starts, ends, labels = connected_components(~cleaned, diagonal=False)
    if rows.size:
        on_border = (rows == 0) | (rows == height - 1) | (starts == 0) | (ends == width)
        open_to_border = np.bincount(labels, weights=on_border) > 0
        hole = ~open_to_border[labels]
        cleaned |= paint_runs((height, width), rows[hole], starts[hole], ends[hole])
    return cleaned


def keep_blobs(mask: npt.ArrayLike, min_area_px: float) -> BoolArray:
    """The 8-connected blobs of a mask with at least ``min_area_px`` pixels, and the largest one
    whatever its size (empty stays empty)."""
    product = np.asarray(mask) > 0
    rows, starts, ends, labels = connected_components(product, diagonal=True)
    if rows.size == 0:
        return np.zeros_like(product)
    areas = np.bincount(labels, weights=ends - starts)
    keep = areas >= min_area_px
    keep[areas.argmax()] = True
    kept = keep[labels]
    return paint_runs((product.shape[0], product.shape[1]), rows[kept], starts[kept], ends[kept])


def largest_component(mask: npt.ArrayLike) -> BoolArray:
    """The largest 8-connected blob of a mask (empty stays empty)."""
    return keep_blobs(mask, math.inf)


def erode(mask: npt.ArrayLike, radius_px: int) -> BoolArray:
    """Binary erosion by a (2r+1)-square: a pixel stays when its whole neighbourhood is product (above
    0). Boolean whatever the mask's dtype: a 0/255 mask's erosion came back as 0/1."""
    out = np.asarray(mask) > 0
    if radius_px <= 0:
        return out
    # A square is separable: erode rows, then columns, each by running minimum over shifts.
    for axis in (0, 1):
        padded = np.pad(out, [(radius_px, radius_px) if a == axis else (0, 0) for a in (0, 1)])
        length = out.shape[axis]
        result = np.ones_like(out)
        for offset in range(2 * radius_px + 1):
            window = padded[offset : offset + length] if axis == 0 else padded[:, offset : offset + length]
            result &= window
        out = result
    return out


def convex_hull(points: npt.ArrayLike) -> F64Array:
    """Convex hull of (N, 2) points by Andrew's monotone chain, counter-clockwise, no repeats.

    The chain itself is sequential; callers keep it cheap by passing only candidate points
    (``mask_hull`` passes the two ends of each mask row).
    """
    unique = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)  # sorted by x, then y
    if unique.shape[0] < 3:
        return unique

    def chain(ordered: F64Array) -> list[tuple[float, float]]:
        hull: list[tuple[float, float]] = []
        for px, py in ordered.tolist():
            while len(hull) >= 2:
                (ax, ay), (bx, by) = hull[-2], hull[-1]
                if (bx - ax) * (py - ay) - (by - ay) * (px - ax) > 0:
                    break
                hull.pop()
            hull.append((px, py))
        return hull

    lower = chain(unique)
    upper = chain(unique[::-1])
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def row_spans(mask: npt.ArrayLike) -> tuple[IntArray, IntArray, IntArray]:
    """Rows that hold product pixels, with the first and one-past-last product column of each."""
    mask = np.asarray(mask) > 0  # argmax of numbers finds a row's largest, not its first product pixel
    filled = mask.any(axis=1)
    rows = np.flatnonzero(filled)
    first = np.argmax(mask[rows], axis=1)
    last = mask.shape[1] - np.argmax(mask[rows, ::-1], axis=1)
    return rows, first.astype(np.intp), last.astype(np.intp)


def _hull_corners(mask: BoolArray) -> F64Array:
    """Pixel-corner points of each row's two ends: the hull of these is the hull of the mask's squares."""
    rows, first, last = row_spans(mask)
    return np.concatenate(
        [
            np.stack([first, rows], axis=1),
            np.stack([first, rows + 1], axis=1),
            np.stack([last, rows], axis=1),
            np.stack([last, rows + 1], axis=1),
        ]
    ).astype(np.float64)


def mask_hull(mask: BoolArray) -> F64Array:
    """The convex hull of a non-empty mask's pixels, as squares: (x, y) pixel-corner vertices."""
    return convex_hull(_hull_corners(mask))


def hull_mask(mask: npt.ArrayLike) -> BoolArray:
    """The convex hull of a mask's pixels, filled: every pixel whose centre is inside the hull of the
    mask's squares, or on its edge.

    Row by row, in exact integer arithmetic (coordinates doubled, so pixel centres are integers): each
    hull edge bounds a row's centres on one side, and a row's pixels are the span between its bounds.
    Rows x edges, not pixels x edges: a 2048 px photo's mask takes milliseconds.
    """
    mask = np.asarray(mask) > 0  # a 0/255 mask's hull, painted over a copy of it, was 0, 1 and 255
    if not mask.any():
        return mask.copy()
    vertices = (mask_hull(mask) * 2).astype(np.int64)  # doubled pixel corners, counter-clockwise
    return _fill_hull(mask, vertices, int(vertices[:, 1].min()) // 2, int(vertices[:, 1].max()) // 2)


def _fill_hull(mask: BoolArray, vertices: npt.NDArray[np.int64], top: int, bottom: int) -> BoolArray:
    """``mask`` with every pixel of rows ``top`` to ``bottom - 1`` whose centre is inside the convex
    polygon ``vertices`` (doubled coordinates, counter-clockwise, at least 3) or on its edge set."""
    starts, ends = vertices, np.roll(vertices, -1, axis=0)
    width = mask.shape[1]
    centres_y = (2 * np.arange(top, bottom, dtype=np.int64) + 1)[:, None]  # doubled row centres
    ax, ay = starts[None, :, 0], starts[None, :, 1]
    dx, dy = (ends - starts)[None, :, 0], (ends - starts)[None, :, 1]
    # A centre (X, Y) is inside edge (a, b) when dx * (Y - ay) - dy * (X - ax) >= 0.
    bound = dx * (centres_y - ay) + dy * ax  # inside when bound - dy * X >= 0
    big = np.int64(4 * width + 4)
    with np.errstate(divide="ignore"):
        highest = np.where(dy > 0, bound // np.where(dy > 0, dy, 1), big).min(axis=1)  # X <= bound / dy
        lowest = np.where(dy < 0, -(bound // np.where(dy < 0, -dy, 1)), -big).max(axis=1)  # X >= ...
    level = np.where(dy == 0, bound >= 0, True).all(axis=1)  # a horizontal edge keeps or drops the row
    first = np.clip(lowest // 2, 0, width)  # X = 2x + 1  ->  x >= ceil((X - 1) / 2)
    last = np.clip((highest - 1) // 2 + 1, 0, width)  # exclusive
    keep = level & (last > first)
    rows = np.arange(top, bottom)[keep]
    hull = mask.copy()
    height = mask.shape[0]
    hull |= paint_runs((height, width), rows, first[keep], last[keep])
    return hull


def solidity(mask: BoolArray) -> float:
    """The mask's pixels over those of its convex hull (0 for an empty mask): near 1 for one convex
    product (an apple, a carton), lower for a chain of products, a heap's ragged edge or a hand across
    the product. The generator prefers in-store cut-outs that score high (``one_object_photos``).

    The hull is that of the pixel centres, so a digital disc scores 1 at any size; the hull of the
    pixels' squares (``hull_mask``) adds a rim of half a pixel, which scored a disc of radius 30 px
    0.96 and of 10 px 0.91, so the score fell with the product's size in the photo.
    """
    area = int(np.count_nonzero(mask))
    if area == 0:
        return 0.0
    rows, first, last = row_spans(mask)
    centres = np.concatenate(
        [np.stack([2 * first + 1, 2 * rows + 1], axis=1), np.stack([2 * last - 1, 2 * rows + 1], axis=1)]
    )
    vertices = convex_hull(centres).astype(np.int64)  # doubled pixel centres, counter-clockwise
    if vertices.shape[0] < 3:  # a line of pixels: its own hull
        return 1.0
    hull = _fill_hull(mask, vertices, int(rows[0]), int(rows[-1]) + 1)
    return area / int(np.count_nonzero(hull))


def mask_on(mask: npt.ArrayLike) -> BoolArray:
    """The product pixels of an HxW mask: a boolean one as it is, one of numbers (0..255, a model's soft
    mask) from 128. Raises ``ValueError`` for an array that is not HxW."""
    array: npt.NDArray[np.generic] = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask is HxW, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.bool_, copy=False)
    return np.asarray(array.astype(np.uint8, copy=False) >= 128, dtype=np.bool_)


def mask_iou(predicted: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    """Intersection over union of two masks of the same size (``mask_on``): the gate's check and the
    matting evaluation's score, one definition (the evaluation's copy read every boolean mask as empty).

    Two empty masks agree perfectly (1.0); one empty and one not share nothing (0.0).
    """
    predicted_on, expected_on = mask_on(predicted), mask_on(expected)
    if predicted_on.shape != expected_on.shape:
        raise ValueError(f"masks differ in size: {predicted_on.shape} vs {expected_on.shape}")
    union = int(np.count_nonzero(predicted_on | expected_on))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(predicted_on & expected_on)) / union
