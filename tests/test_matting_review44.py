"""Review 44 of the matting helpers: ``paste`` places a region only inside the image it pastes into."""

from __future__ import annotations

import numpy as np
import pytest

from shared.matting.roi import paste, product_box


def test_paste_refuses_a_box_left_of_the_image_instead_of_wrapping_it_to_the_right_edge() -> None:
    # Negative indices count from the end: the region landed in columns 7..8 of a 10-wide image.
    region = np.full((1, 2), 255, np.uint8)
    with pytest.raises(ValueError, match=r"\(-3, 0, -1, 1\).*not inside the 10x5 image"):
        paste(region, (-3, 0, -1, 1), (10, 5))


def test_paste_refuses_a_box_past_the_right_edge_naming_it() -> None:
    # It failed in numpy's "could not broadcast input array from shape (2,4) into shape (2,2)".
    region = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"\(8, 0, 12, 2\).*not inside the 10x5 image"):
        paste(region, (8, 0, 12, 2), (10, 5))


def test_paste_at_the_far_edges_keeps_the_last_row_and_column() -> None:
    region = np.arange(1, 7, dtype=np.uint8).reshape(2, 3)
    out = paste(region, (7, 3, 10, 5), (10, 5))
    assert np.array_equal(out[3:, 7:], region) and out.sum() == region.sum()


def product_mask() -> np.ndarray:
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 8:16] = 255
    return mask


@pytest.mark.parametrize("margin", [float("nan"), float("inf")])
def test_a_margin_that_is_no_number_is_refused_naming_it(margin: float) -> None:
    # NaN is not below 0: it failed in round() ("cannot convert float NaN to integer"), inf in an
    # OverflowError, neither naming the margin.
    with pytest.raises(ValueError, match="margin"):
        product_box(product_mask(), margin)


def test_a_centre_shift_that_is_no_number_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="centre_shift"):
        product_box(product_mask(), 0.25, centre_shift=(float("nan"), 0.0))


def test_a_mask_that_is_not_one_channel_is_refused_naming_its_shape() -> None:
    # An RGB or HxWx1 mask failed in "too many values to unpack".
    with pytest.raises(ValueError, match=r"\(20, 30, 3\)"):
        product_box(np.repeat(product_mask()[:, :, None], 3, axis=2))


def test_a_single_pixel_product_in_a_corner_gets_a_box_inside_the_image_around_it() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[19, 29] = 255
    left, top, right, bottom = product_box(mask, 0.25) or (0, 0, 0, 0)
    assert 0 <= left <= 29 < right == 30 and 0 <= top <= 19 < bottom == 20
