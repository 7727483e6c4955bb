"""What the operations runbook tells an operator the gate's flags mean, against what the checks do; and
what a refusal says the gate reads each object for."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.topics import IMAGE_MATTED
from services.gate.config import GateSettings
from services.gate.stage import GateMetrics, handle
from shared.bus import make_envelope
from shared.config import Settings
from shared.errors import BadInput
from shared.gate.checks import GateThresholds, mask_checks
from shared.observability import StageMetrics
from shared.runtime import Context
from tests.support.gate import ReadRecordingStore, matted_item

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


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("image", "its product's colours are read under its masks"),
        ("predicted mask", "it is compared pixel by pixel with the expected mask"),
        ("expected mask", "it is compared pixel by pixel with the predicted mask"),
        ("reference image", "its product's colours are read under its mask"),
        ("reference mask", "its photo's product colours are read under it"),
    ],
)
def test_an_object_over_the_pixel_limit_is_refused_for_what_the_gate_reads_it_for(
    tmp_path: Path, name: str, why: str
) -> None:
    """Every object's refusal said "it is compared pixel by pixel"; only the two masks are compared, the
    images' colours are read under masks, and the reference photo and its mask are read for that
    alone."""
    store = ReadRecordingStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    huge = {"width": 100_000, "height": 100_000}
    if name == "predicted mask":
        matted = matted.model_copy(update={"predicted_mask": matted.predicted_mask.model_copy(update=huge)})
    else:
        field = name.replace(" ", "_")
        stated = getattr(matted.generated, field).model_copy(update=huge)
        matted = matted.model_copy(update={"generated": matted.generated.model_copy(update={field: stated})})
    event = make_envelope(IMAGE_MATTED, matted, event_id="e" * 32, sku_id="SKU-1", trace_id="t", producer="t")
    ctx = Context("gate", store, Settings(), StageMetrics("gate"), logging.getLogger("test"))

    with pytest.raises(BadInput) as refused:
        handle(event, ctx, gate=GateSettings(), metrics=GateMetrics(CollectorRegistry()))

    assert refused.value.reason == "too_many_pixels"
    assert refused.value.detail.startswith(f"{name} ") and refused.value.detail.endswith(f": {why}")
