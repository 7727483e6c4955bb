"""Review 44 of the matting helpers: ``paste`` places a region only inside the image it pastes into."""

from __future__ import annotations

import numpy as np
import pytest

from shared.matting.roi import paste


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
