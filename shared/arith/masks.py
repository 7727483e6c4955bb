"""Mask arithmetic: connected components by runs, painting runs back, blob and hole clean-up, erosion.

Masks are boolean HxW arrays (True = product). The matting post-processing (``clean_mask``), the
captioner's shape features (``largest_component``, ``erode``) and the real-photo pair builder all
use these, so they live below the model libraries.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["clean_mask", "connected_components", "erode", "keep_blobs", "largest_component", "paint_runs"]

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]


def connected_components(mask: BoolArray, *, diagonal: bool) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Label the connected components of a boolean HxW mask, run by run.

    Returns ``(rows, starts, ends, labels)``: one entry per horizontal run of True pixels
    (columns ``starts[i]`` to ``ends[i] - 1`` of row ``rows[i]``), and the component (0..k-1) it
    belongs to. ``diagonal`` selects 8-connectivity, else 4. Runs, not pixels, are the unit, so
    a 512x512 product mask is a few thousand nodes; their union is found with vectorised
    hooking and pointer jumping instead of a per-pixel Python flood fill.
    """
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
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


def erode(mask: BoolArray, radius_px: int) -> BoolArray:
    """Binary erosion by a (2r+1)-square: a pixel stays when its whole neighbourhood is set."""
    if radius_px <= 0:
        return mask.copy()
    out = mask.copy()
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
