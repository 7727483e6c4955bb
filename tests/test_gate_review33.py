"""Gate review 33: what a flagged item's check messages tell the reviewer who reads them."""

from __future__ import annotations

import numpy as np

from schemas.events import GateCheck
from shared.gate.checks import ColourStats, GateThresholds, drift_check, mask_checks

SIZE = 200  # 40,000 pixels: fractions of the frame in steps of 0.0025%


def _frame_with(pixels: int) -> np.ndarray:
    """A SIZE x SIZE mask whose first ``pixels`` pixels (row by row) are product."""
    mask = np.zeros(SIZE * SIZE, dtype=np.uint8)
    mask[:pixels] = 255
    return mask.reshape(SIZE, SIZE)


def _checks(predicted: np.ndarray, expected: np.ndarray, **thresholds: float) -> dict[str, GateCheck]:
    reference = np.zeros((SIZE, SIZE), dtype=np.uint8)
    reference[50:150, 50:150] = 255
    _, checks = mask_checks(
        predicted_mask=predicted,
        expected_mask=expected,
        reference_mask=reference,
        thresholds=GateThresholds(**thresholds),
    )
    return {check.code: check for check in checks}


def test_a_flagged_figure_is_not_shown_as_its_threshold() -> None:
    # Before, the figures were rounded to the threshold's digits: an IoU of 0.8996 was flagged with
    # "0.900 (need >= 0.900)", a drift of 20.04 with "moved 20.0 ... (tolerance 20.0)", and the
    # reviewer could not tell why the item was in the queue.
    expected = _frame_with(10_000)
    iou_check = _checks(_frame_with(8_996), expected)["iou_below_threshold"]
    assert not iou_check.passed
    assert iou_check.message == "IoU of predicted and expected mask 0.8996 (need >= 0.9000)"

    near_empty = _checks(_frame_with(199), _frame_with(199))["mask_empty"]  # 0.4975% of the frame
    assert not near_empty.passed
    assert near_empty.message == "predicted mask covers 0.498% of the frame (need >= 0.500%)"

    most = _checks(_frame_with(36_001), _frame_with(36_001))["mask_full_frame"]  # 90.0025%
    assert not most.passed
    assert most.message == "predicted mask covers 90.002% of the frame (need <= 90.000%)"

    flat = ColourStats(mean_lab=(50.0, 0.0, 0.0), std_lab=(0.0, 0.0, 0.0), pixels=1000)
    moved = ColourStats(mean_lab=(50.0, 20.04, 0.0), std_lab=(0.0, 0.0, 0.0), pixels=1000)
    drift = drift_check(product=moved, reference=flat, thresholds=GateThresholds(), colour_gain=None)
    assert not drift.passed
    assert drift.message == "product colours moved 20.04 Lab units from the reference (tolerance 20.00)"


def test_figures_away_from_the_threshold_keep_their_usual_digits() -> None:
    checks = _checks(_frame_with(5_000), _frame_with(10_000))
    assert checks["iou_below_threshold"].message == "IoU of predicted and expected mask 0.500 (need >= 0.900)"
    assert checks["mask_empty"].message == "predicted mask covers 12.50% of the frame (need >= 0.50%)"


def test_an_empty_mask_flagged_at_a_threshold_of_zero_says_it_is_empty() -> None:
    # An empty mask fails whatever the threshold; at 0 its message read "covers 0.00% of the frame
    # (need >= 0.00%)", a figure that meets the threshold it quotes.
    empty = _checks(_frame_with(0), _frame_with(0), min_foreground_fraction=0.0)["mask_empty"]
    assert not empty.passed
    assert empty.message == "predicted mask is empty: it covers none of the frame"
