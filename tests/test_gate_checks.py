"""The gate's arithmetic on hand-made masks: IoU and every check, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from schemas.events import GateCheck, ImageGenerated
from services.gate.config import GateSettings
from shared.config import ConfigError, load_settings
from shared.gate.checks import (
    MAX_DECLARED_GAIN,
    GateThresholds,
    borders_touched,
    colour_drift,
    colour_stats,
    evaluate,
    failed_reasons,
    foreground_fraction,
    mask_iou,
)

SIZE = 64


def box(top: int, left: int, bottom: int, right: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


EMPTY = np.zeros((SIZE, SIZE), dtype=np.uint8)
FULL = np.full((SIZE, SIZE), 255, dtype=np.uint8)


def test_iou_of_identical_masks_is_one() -> None:
    assert mask_iou(box(10, 10, 30, 30), box(10, 10, 30, 30)) == 1.0


def test_iou_of_overlapping_boxes() -> None:
    # 20x20 boxes overlapping on 20x10: intersection 200, union 600.
    assert mask_iou(box(10, 10, 30, 30), box(10, 20, 30, 40)) == pytest.approx(200 / 600)


def test_iou_of_disjoint_masks_is_zero() -> None:
    assert mask_iou(box(0, 0, 10, 10), box(20, 20, 30, 30)) == 0.0


def test_iou_of_two_empty_masks_is_one() -> None:
    assert mask_iou(EMPTY, EMPTY) == 1.0


def test_iou_with_one_empty_mask_is_zero() -> None:
    assert mask_iou(EMPTY, box(10, 10, 30, 30)) == 0.0
    assert mask_iou(box(10, 10, 30, 30), EMPTY) == 0.0


def test_iou_thresholds_grey_masks_at_128_and_refuses_size_mismatch() -> None:
    grey = (box(10, 10, 30, 30) // 255 * 127).astype(np.uint8)  # below 128: background
    assert mask_iou(grey, EMPTY) == 1.0
    assert mask_iou((box(10, 10, 30, 30) // 255 * 128).astype(np.uint8), box(10, 10, 30, 30)) == 1.0
    with pytest.raises(ValueError, match="differ in size"):
        mask_iou(EMPTY, np.zeros((SIZE, SIZE + 1), dtype=np.uint8))


def test_foreground_fraction() -> None:
    assert foreground_fraction(EMPTY) == 0.0
    assert foreground_fraction(FULL) == 1.0
    assert foreground_fraction(box(0, 0, 32, 64)) == pytest.approx(0.5)


def test_borders_touched() -> None:
    assert borders_touched(box(10, 10, 30, 30)) == 0
    assert borders_touched(box(0, 10, 30, 30)) == 1  # runs along the top edge
    assert borders_touched(FULL) == 4
    assert borders_touched(EMPTY) == 0
    # A product grazing the bottom edge with one pixel is not "running along" it.
    grazing = box(10, 10, 30, 30)
    grazing[SIZE - 1, 20] = 255
    assert borders_touched(grazing) == 0


def solid(colour: tuple[int, int, int]) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), colour, dtype=np.uint8)


def striped(first: tuple[int, int, int], second: tuple[int, int, int]) -> np.ndarray:
    image = solid(first)
    image[:, ::2] = second
    return image


def test_colour_stats_and_drift() -> None:
    mask = box(16, 16, 48, 48)
    red = colour_stats(solid((200, 30, 30)), mask)
    assert red is not None and red.pixels == 32 * 32
    assert colour_drift(red, red) == 0.0
    blue = colour_stats(solid((30, 30, 200)), mask)
    assert blue is not None and colour_drift(blue, red) > 50
    # Brighter light on the same colour moves L* only, which counts half.
    lighter = colour_stats(solid((220, 50, 50)), mask)
    assert lighter is not None and colour_drift(lighter, red) < 10
    # A flat colour where the reference has a pattern: the spread collapses.
    pattern = colour_stats(striped((200, 30, 30), (240, 240, 240)), mask)
    assert pattern is not None and colour_drift(red, pattern) > 20


def test_colour_stats_of_a_tiny_region_is_none() -> None:
    assert colour_stats(solid((0, 0, 0)), box(0, 0, 2, 2)) is None


def run_checks(
    predicted: np.ndarray,
    expected: np.ndarray,
    image: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    thresholds: GateThresholds | None = None,
) -> tuple[float, dict[str, bool]]:
    image = solid((200, 30, 30)) if image is None else image
    reference = solid((200, 30, 30)) if reference is None else reference
    iou, checks = evaluate(
        predicted_mask=predicted,
        expected_mask=expected,
        image=image,
        reference_image=reference,
        reference_mask=box(16, 16, 48, 48),
        thresholds=thresholds or GateThresholds(),
    )
    assert [check.code for check in checks] == [
        "iou_below_threshold",
        "mask_empty",
        "mask_full_frame",
        "mask_touches_all_borders",
        "drift_unchecked",
        "product_drift",
    ]
    return iou, {check.code: check.passed for check in checks}


def test_a_good_item_passes_every_check() -> None:
    mask = box(16, 16, 48, 48)
    iou, passed = run_checks(mask, mask)
    assert iou == 1.0 and all(passed.values())


def test_iou_check_fails_below_threshold_and_passes_at_it() -> None:
    expected = box(0, 0, 20, 50)  # 1000 px
    predicted = box(0, 0, 20, 45)  # 900 px inside it: IoU exactly 0.9
    iou, passed = run_checks(predicted, expected)
    assert iou == pytest.approx(0.9) and passed["iou_below_threshold"]
    _, passed = run_checks(predicted, expected, thresholds=GateThresholds(iou_min=0.91))
    assert not passed["iou_below_threshold"]


def test_both_masks_empty_fails_only_as_an_empty_mask() -> None:
    iou, passed = run_checks(EMPTY, EMPTY)
    assert iou == 1.0
    assert not passed["mask_empty"]
    assert passed["iou_below_threshold"] and passed["mask_full_frame"]
    # A threshold of 0 turns the near-empty check off, not the empty one: both masks empty scored
    # IoU 1 and went to the retraining store.
    _, passed = run_checks(EMPTY, EMPTY, thresholds=GateThresholds(min_foreground_fraction=0.0))
    assert not passed["mask_empty"]
    _, passed = run_checks(
        box(0, 0, 1, 1), box(0, 0, 1, 1), thresholds=GateThresholds(min_foreground_fraction=0.0)
    )
    assert passed["mask_empty"]


def test_empty_prediction_fails_iou_and_emptiness() -> None:
    iou, passed = run_checks(EMPTY, box(16, 16, 48, 48))
    assert iou == 0.0
    assert not passed["iou_below_threshold"] and not passed["mask_empty"]


def test_near_empty_prediction_is_flagged() -> None:
    tiny = box(30, 30, 32, 32)  # 4 px of 4096: 0.1%
    _, passed = run_checks(tiny, tiny)
    assert not passed["mask_empty"]


def test_full_frame_mask_fails_coverage_and_borders() -> None:
    _, passed = run_checks(FULL, FULL)
    assert not passed["mask_full_frame"] and not passed["mask_touches_all_borders"]


def test_mask_along_all_borders_is_flagged_even_when_not_full() -> None:
    frame = FULL.copy()
    frame[8:56, 8:56] = 0  # a hollow frame: 44% of the image, but all four borders
    _, passed = run_checks(frame, frame)
    assert passed["mask_full_frame"] and not passed["mask_touches_all_borders"]


def test_painted_over_product_is_flagged_as_drift() -> None:
    mask = box(16, 16, 48, 48)
    _, passed = run_checks(mask, mask, image=solid((30, 30, 200)))
    assert not passed["product_drift"] and passed["iou_below_threshold"]


def drift_check(image: np.ndarray, colour_gain: tuple[float, float, float] | None) -> GateCheck:
    mask = box(16, 16, 48, 48)
    _, checks = evaluate(
        predicted_mask=mask,
        expected_mask=mask,
        image=image,
        reference_image=solid((200, 120, 60)),
        reference_mask=mask,
        thresholds=GateThresholds(),
        colour_gain=colour_gain,
    )
    return checks[-1]


def test_a_declared_scene_match_is_not_drift_but_the_same_change_undeclared_is() -> None:
    # The product's white balance pulled towards a bluish scene, as the composite backend does it.
    gain = (0.8, 1.0, 1.6)
    matched = solid((160, 120, 96))  # (200, 120, 60) x gain
    undeclared = drift_check(matched, None)
    assert not undeclared.passed and undeclared.value > 20
    declared = drift_check(matched, gain)
    assert declared.passed and declared.value < 1 and "declared colour gain" in declared.message
    # Declaring a gain does not excuse a different change on top of it.
    assert not drift_check(solid((60, 160, 96)), gain).passed


def test_a_declared_gain_is_clipped_like_the_generator_clips() -> None:
    # A bright channel saturates in the generated image; the reference is clipped alike.
    assert drift_check(solid((255, 144, 72)), (1.5, 1.2, 1.2)).passed


def test_a_declared_gain_beyond_the_limit_fails_by_itself() -> None:
    check = drift_check(solid((200, 120, 60)), (1.0, 1.0, MAX_DECLARED_GAIN * 1.1))
    assert not check.passed and check.code == "product_drift"
    assert "beyond" in check.message and check.threshold == MAX_DECLARED_GAIN


def test_a_vanishing_declared_gain_fails_the_drift_check_with_a_finite_figure() -> None:
    # Before, (1e-310, 1, 1) made the check's value 1 / 1e-310 = inf, written as JSON null, and the
    # console and the trainstore refused the gate's event as schema_invalid. The schema keeps the range
    # it was published with (narrowing it made stored console tasks unreadable); the figure is capped.
    ImageGenerated.model_validate({**_generated_fields(), "colour_gain": (1e-310, 1.0, 1.0)})
    check = drift_check(solid((200, 120, 60)), (1e-310, 1.0, 1.0))
    assert not check.passed and check.value == 1e6
    GateCheck.model_validate_json(check.model_dump_json())  # what a consumer reads back
    with pytest.raises(ValidationError, match="finite number"):
        GateCheck(code="product_drift", passed=False, value=float("inf"), threshold=2.0)


def _generated_fields() -> dict[str, object]:
    image = {"uri": "file:///x.png", "sha256": "0" * 64, "bytes": 1, "width": 1, "height": 1}
    return {
        "item_id": "item-1",
        "sku": {"sku_id": "SKU-1", "name": "One", "category": "soda can"},
        "reference_photo_id": "p1",
        "reference_image": image,
        "reference_mask": image,
        "image": image,
        "expected_mask": image,
        "backend": "composite",
        "model_id": "synth",
        "seed": 1,
        "variant_index": 0,
    }


def test_drift_is_skipped_without_a_reference_region() -> None:
    mask = box(16, 16, 48, 48)
    _, checks = evaluate(
        predicted_mask=mask,
        expected_mask=mask,
        image=solid((30, 30, 200)),
        reference_image=solid((200, 30, 30)),
        reference_mask=EMPTY,
        thresholds=GateThresholds(),
    )
    drift = checks[-1]
    assert drift.passed and drift.message.startswith("skipped")
    # The drift it could not measure flags the item instead, under its own reason.
    assert failed_reasons(checks) == ["drift_unchecked"]


def test_failed_reasons_lists_failed_codes_in_order() -> None:
    _, checks = evaluate(
        predicted_mask=FULL,
        expected_mask=box(16, 16, 48, 48),
        image=solid((200, 30, 30)),
        reference_image=solid((200, 30, 30)),
        reference_mask=box(16, 16, 48, 48),
        thresholds=GateThresholds(),
    )
    assert failed_reasons(checks) == ["iou_below_threshold", "mask_full_frame", "mask_touches_all_borders"]


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="iou_min"):
        GateThresholds(iou_min=1.5)
    with pytest.raises(ValueError, match="min_foreground_fraction"):
        GateThresholds(min_foreground_fraction=0.5, max_foreground_fraction=0.4)
    with pytest.raises(ValueError, match="unknown gate threshold"):
        GateThresholds().with_overrides({"iou": 0.5})


def test_settings_apply_category_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_IOU_MIN", "0.92")
    monkeypatch.setenv(
        "SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"iou_min": 0.8, "drift_tolerance": 30}}'
    )
    gate = load_settings(GateSettings)
    assert gate.thresholds_for("soda can") == GateThresholds(iou_min=0.92)
    assert gate.thresholds_for("pouch") == GateThresholds(iou_min=0.8, drift_tolerance=30.0)


def test_default_iou_threshold_is_090() -> None:
    assert GateSettings.model_fields["gate_iou_min"].default == 0.90
    assert GateThresholds().iou_min == 0.90


def test_bad_overrides_are_named_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"iou": 0.8}}')
    with pytest.raises(ConfigError, match=r"SKUFORGE_GATE_CATEGORY_OVERRIDES.*unknown gate threshold"):
        load_settings(GateSettings)
