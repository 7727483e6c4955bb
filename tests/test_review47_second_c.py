"""Review 47, a second look: the composite's least product height (``MIN_PRODUCT_HEIGHT_PX``) refused the
replay of a variant it had served. A product wide enough to be narrowed to fit the frame comes out
under 2 px tall on a small canvas (a 30:1 product at 64 px) and records the height it came to; sent
back, that record was refused as a ``height_fraction`` under the least, though it draws the same image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.generation.backend import GenerationRequest
from shared.generation.composite import MIN_PRODUCT_HEIGHT_PX, CompositeBackend, CompositeError
from tests.support.generation import FLAT


def _wide_request(width_px: int, parameters: dict[str, Any], size: int, seed: int = 1) -> GenerationRequest:
    """A red product ``width_px`` wide and 40 px tall on grey."""
    reference = np.full((60, width_px + 20, 3), 200, np.uint8)
    reference[10:50, 10 : 10 + width_px] = (180, 40, 40)
    mask = np.zeros(reference.shape[:2], np.uint8)
    mask[10:50, 10 : 10 + width_px] = 255
    return GenerationRequest(reference, mask, "", "", seed=seed, n=1, parameters=parameters, size=size)


@pytest.mark.parametrize(("width_px", "size"), [(1200, 64), (2400, 128)])
@pytest.mark.parametrize("asked", [{**FLAT, "height_fraction": 0.6}, {}])
def test_a_served_record_of_a_product_narrowed_under_the_least_height_replays(
    width_px: int, size: int, asked: dict[str, Any]
) -> None:
    backend = CompositeBackend()
    [sample] = backend.generate(_wide_request(width_px, asked, size))
    recorded = sample.parameters["height_fraction"]
    assert recorded * size < MIN_PRODUCT_HEIGHT_PX  # narrowed to fit: the width decided its height
    [replayed] = backend.generate(_wide_request(width_px, sample.parameters, size, seed=99))
    assert np.array_equal(replayed.image, sample.image)
    assert replayed.parameters == sample.parameters


def test_a_height_under_the_least_that_no_narrowing_explains_is_still_refused() -> None:
    """The same product, asked a height under the least that is below its width's own limit."""
    with pytest.raises(CompositeError, match=r"height_fraction .* at least 0\.03125"):
        CompositeBackend().generate(_wide_request(1200, {**FLAT, "height_fraction": 0.01}, 64))
