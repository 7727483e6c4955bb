"""What the operations runbook tells an operator the gate's flags mean, against what the checks do."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shared.gate.checks import GateThresholds, mask_checks

OPS = Path(__file__).resolve().parents[1] / "docs" / "ops.md"


def _blamed(reference_px: int, product_px: int) -> str:
    """The message of a failed ``drift_unchecked`` with that many product pixels on each side."""
    reference, product = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    reference.flat[:reference_px] = 255
    product.flat[:product_px] = 255
    _, checks = mask_checks(
        predicted_mask=product, expected_mask=product, reference_mask=reference, thresholds=GateThresholds()
    )
    (check,) = (check for check in checks if check.code == "drift_unchecked")
    assert not check.passed
    return check.message


def test_the_runbook_reads_drift_unchecked_as_either_side_the_check_blames() -> None:
    """The flag-rate runbook said ``drift_unchecked`` "means reference masks with no product, so look at
    the captioner's masks"; the check also fails for a generated image with a product under 64 pixels
    (a generator that lost or shrank it), where the captioner's masks are fine."""
    runbook = " ".join(OPS.read_text().split())
    (reading,) = re.findall(r"`drift_unchecked` means .*?the IoU panel", runbook)
    for reference_px, product_px in ((0, 200), (200, 0)):
        side = re.search(r"the (reference photo|generated image) has", _blamed(reference_px, product_px))
        assert side is not None
        assert side.group(1) in reading, f"{side.group(1)!r} missing from: {reading}"
