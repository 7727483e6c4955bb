"""Mask arithmetic given a 0/255 mask, as images are read, not only a boolean one."""

from __future__ import annotations

import numpy as np

from shared.arith.masks import connected_components, erode, hull_mask, mask_iou, row_spans


def _square_on(size: int, dtype: type[np.generic], on: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=dtype)
    mask[2:-2, 2:-2] = on
    return mask


def test_connected_components_of_a_0_255_mask_are_those_of_its_product_pixels() -> None:
    # 255 written into int8 was -1: every run came back with its start and end swapped.
    expected = connected_components(_square_on(9, np.bool_, True), diagonal=True)
    found = connected_components(_square_on(9, np.uint8, 255), diagonal=True)
    for found_part, expected_part in zip(found, expected, strict=True):
        assert np.array_equal(found_part, expected_part)
    _, starts, ends, _ = found
    assert (starts < ends).all()


def test_erode_of_a_0_255_mask_gives_the_boolean_erosion() -> None:
    # It returned 1s, not 255s, for a uint8 mask: read as an image, the product was near black.
    expected = erode(_square_on(9, np.bool_, True), 1)
    found = erode(_square_on(9, np.uint8, 255), 1)
    assert found.dtype == np.bool_ and np.array_equal(found, expected) and found.sum() == 9


def test_the_hull_of_a_0_255_mask_is_boolean_and_spans_are_its_first_product_pixels() -> None:
    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[1, [1, 5]] = 255
    mask[3, 1:6] = [1, 0, 0, 0, 255]  # a faint pixel before a bright one: argmax found the bright one
    hull = hull_mask(mask)
    assert hull.dtype == np.bool_ and np.array_equal(hull, hull_mask(mask > 0))
    assert row_spans(mask)[1].tolist() == [1, 1]


def test_mask_iou_reads_boolean_and_0_255_masks_alike() -> None:
    # The matting evaluation's own copy compared a boolean mask with 128: every boolean mask was empty,
    # and two disjoint ones agreed perfectly (1.0).
    left, right = np.zeros((4, 4), np.bool_), np.zeros((4, 4), np.bool_)
    assert mask_iou(left, right) == 1.0  # both empty: nothing to disagree about
    left[:2], right[1:3] = True, True
    assert mask_iou(left, right) == mask_iou(left * np.uint8(255), right * np.uint8(255)) == 4 / 12
    assert mask_iou(left[:1], right[:1]) == 0.0
