"""Real-photo training masks (shared.matting.grocery) on drawn photos: no dataset needed."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from shared.matting.grocery import catalogue_mask, hull_mask


def carton_on_white() -> tuple[Image.Image, np.ndarray]:
    """A carton: a blue front face and a side face as white as the background, joined by an edge."""
    image = Image.new("RGB", (200, 160), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 30, 109, 139), fill=(30, 60, 200))  # front face
    draw.rectangle((110, 30, 149, 139), fill=(253, 253, 253))  # white side face
    draw.line((149, 30, 149, 139), fill=(200, 200, 200))  # its far edge, a faint grey line
    truth = np.zeros((160, 200), dtype=bool)
    truth[30:140, 40:150] = True
    return image, truth


def test_flood_fill_loses_a_white_face_and_the_hull_keeps_it() -> None:
    image, truth = carton_on_white()
    flood = catalogue_mask(image, tolerance=8.0)
    assert not flood[:, 110:149].any(), "the flood fill should leak into the white face"
    convex = catalogue_mask(image, tolerance=8.0, convex=True)
    assert np.array_equal(convex, truth)


def test_hull_of_a_rectangle_is_itself_and_a_notch_is_filled() -> None:
    rectangle = np.zeros((50, 60), dtype=bool)
    rectangle[10:40, 5:55] = True
    assert np.array_equal(hull_mask(rectangle), rectangle)
    notched = rectangle.copy()
    notched[10:25, 20:40] = False  # a notch from the top edge, between two shoulders
    assert np.array_equal(hull_mask(notched), rectangle)
    assert not hull_mask(np.zeros((5, 5), dtype=bool)).any()
