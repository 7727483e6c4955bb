"""Caption accuracy on renderer products through the real path: photo → U2-NetP mask → attributes → caption.

The products come from a catalogue seed used by nothing that was fitted (the shape tree was fitted
on seed 4242, the matting model trained on seeds 1 and 9001), so these are held-out figures.
Needs the committed U2-NetP: without it the test fails and says so.
"""

from __future__ import annotations

import pytest

from shared.captioning.evaluate import first_colour_in, renderer_accuracy
from tests.support.captioning import committed_session

pytestmark = pytest.mark.slow

SEED = 2026
PRODUCTS = 60
SIZE_PX = 256


def test_first_caption_colour_and_shape_match_the_renderer_truth() -> None:
    report = renderer_accuracy(PRODUCTS, SEED, session=committed_session(), size_px=SIZE_PX)
    assert report.n_products == PRODUCTS
    assert sum(sum(row.values()) for row in report.shape_confusion.values()) == PRODUCTS
    assert report.colour_accuracy >= 0.90, report.colour_misses
    assert report.shape_accuracy >= 0.85, (report.shape_confusion, report.shape_misses)


def test_first_colour_in_reads_the_caption() -> None:
    assert first_colour_in("a photo of an orange and white cereal box by Crumbly") == "orange"
    assert first_colour_in("a photo of a cereal box by Crumbly") is None
