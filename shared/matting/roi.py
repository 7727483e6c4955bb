"""Matting a region of interest: the box around where the generator says the product is.

A salient-object model such as U2-Net cuts out *the* salient thing. On a shelf, among other
products, or behind a smaller one, that is often the group, not the product the generator placed.
The generator knows where it placed it (the expected mask), so the matting stage mats a square
box around the expected mask's bounding box, widened by a margin on every side, and pastes the
answer back at full size (zeros outside the box). Neighbours outside the box cannot leak in, and
the product fills more of the model's 320 px input.

The box says where to look, not what shape to find: a generator that misplaced the product, or
lost it, still gets a mask that disagrees with its expected mask (``bench/gate.py`` measures that
with shifted and painted-over cases, each matted in the box of its own expected mask).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

UInt8Array = npt.NDArray[np.uint8]
# (left, top, right, bottom) in pixels, right and bottom exclusive: PIL's crop box.
Box = tuple[int, int, int, int]

DEFAULT_ROI_MARGIN = 0.25


def product_box(
    mask: UInt8Array, margin: float = DEFAULT_ROI_MARGIN, *, centre_shift: tuple[float, float] = (0.0, 0.0)
) -> Box | None:
    """The square box ``margin`` x the product's size wider than its bounding box on every side.

    The box is moved, not cut, to stay inside the image; it is cut only when the image is smaller
    than the box. ``centre_shift`` (dx, dy), in units of the box side, moves the box centre first
    (training uses it so the model does not learn that the product is always centred). None when
    the mask has no product pixel (value >= 128): then there is no region, and the caller mats the
    whole image.
    """
    # NaN passes ``< 0``: it, and inf, failed later in round(), naming neither argument.
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a number >= 0, got {margin}")
    if not all(math.isfinite(shift) for shift in centre_shift):
        raise ValueError(f"centre_shift must be finite numbers, got {centre_shift}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be one channel, H x W; got shape {mask.shape}")
    foreground = mask >= 128
    rows = np.flatnonzero(foreground.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(foreground.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    height, width = mask.shape
    side = max(bottom - top, right - left) * (1 + 2 * margin)
    centre_x = (left + right) / 2 + centre_shift[0] * side
    centre_y = (top + bottom) / 2 + centre_shift[1] * side
    side_x, side_y = min(round(side), width), min(round(side), height)
    box_left = round(min(max(centre_x - side_x / 2, 0), width - side_x))
    box_top = round(min(max(centre_y - side_y / 2, 0), height - side_y))
    return box_left, box_top, box_left + side_x, box_top + side_y


def box_problem(box: Box, size: tuple[int, int]) -> str | None:
    """Why ``box`` (left, top, right, bottom) is no region of an image of ``size`` (w, h); None if it is."""
    left, top, right, bottom = box
    width, height = size
    if right <= left or bottom <= top:
        return f"empty ({right - left}x{bottom - top}); a box is (left, top, right, bottom)"
    if left < 0 or top < 0 or right > width or bottom > height:
        return (
            f"not inside the {width}x{height} image (needs 0 <= left < right <= {width}, "
            f"0 <= top < bottom <= {height})"
        )
    return None


def paste(region: UInt8Array | npt.NDArray[np.float32], box: Box, size: tuple[int, int]) -> npt.NDArray:
    """``region`` (the box's size) placed in a zero array of ``size`` (width, height)."""
    # A box past an edge failed in numpy's broadcast message; one left of or above the image was
    # pasted silently at the opposite edge (negative indices count from the end).
    if problem := box_problem(box, size):
        raise ValueError(f"box {tuple(box)}: {problem}")
    left, top, right, bottom = box
    if region.shape != (bottom - top, right - left):
        raise ValueError(
            f"region is {region.shape[1]}x{region.shape[0]}, the box {right - left}x{bottom - top}"
        )
    out = np.zeros((size[1], size[0]), dtype=region.dtype)
    out[top:bottom, left:right] = region
    return out
