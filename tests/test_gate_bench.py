"""The gate's quality on a seeded subset of bench/gate.py, with the committed U2-NetP (CPU).

Targets (issue 6): good images pass the default gate at >= 90%; the same images with the expected
mask shifted or the product painted over are flagged at >= 95%.

Measured (bench/results/gate.json, 100 images, the default matting model since 2026-12-04): composite
images pass at 0.84 (0.76 at a second seed; the renderer-trained model passed 0.92 and 0.88), broken
ones are flagged every time, renderer photos pass at 0.98. Images are matted as the matting stage
mats them: in the box around the expected mask (shared/matting/roi.py).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from bench.gate import run_bench
from shared.matting.session import MattingSession, open_session

pytestmark = pytest.mark.slow

N_IMAGES = 20
SEED = 11
SIZE_PX = 512


@functools.cache
def session() -> MattingSession:
    return open_session(None, threads=2, use_gpu=False, store=None, max_batch=8, uri_from=None)


@functools.cache
def figures(source: str) -> dict[str, Any]:
    return run_bench(N_IMAGES, SEED, size_px=SIZE_PX, source=source, session=session())


def test_broken_composites_are_flagged() -> None:
    result = figures("composite")
    assert result["n_bad_images"] == 2 * N_IMAGES
    assert result["flag_rate_bad"] >= 0.95, result
    # Also where the model's mask was right: the gate's own checks catch the damage.
    assert (
        result["flag_rate_bad_of_passed_good"] in (None,) or result["flag_rate_bad_of_passed_good"] >= 0.95
    ), result


def test_good_renderer_photos_pass_and_broken_ones_are_flagged() -> None:
    result = figures("renderer")
    assert result["pass_rate_good"] >= 0.90, result
    assert result["flag_rate_bad"] >= 0.95, result
    assert result["n_bad_of_passed_good"] >= 2 * round(0.9 * N_IMAGES)


@pytest.mark.xfail(
    strict=True,
    reason="the real-photo matting model (issue 12) passes 0.80 of these renderer composites at this seed, "
    "below issue 6's 0.90 (the renderer-trained model passed 0.92 but cut real photos to pieces); "
    "strict: this fails loudly once a model reaches 0.90 again",
)
def test_good_composites_pass_the_default_gate() -> None:
    assert figures("composite")["pass_rate_good"] >= 0.90
