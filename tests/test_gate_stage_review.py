"""The gate stage's handler on events a hostile or broken upstream might send: what it refuses, and
the reason and detail its dead letter carries. Unit level: the handler is called as the runtime calls
it; a ``BadInput`` is what the runtime dead-letters."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.events import ImageMatted
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED, IMAGE_MATTED
from services.gate.config import GateSettings
from services.gate.stage import GateMetrics, handle
from services.gate.stage import build_stage as build_gate
from shared.bus import make_envelope
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput
from shared.gate.checks import CHECK_CODES, evaluate, failed_reasons
from shared.images import decode_image, decode_mask
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from tests.support.gate import ReadRecordingStore, matted_item, run_gate


def test_an_event_that_misstates_its_image_size_is_refused_not_passed_on(tmp_path: Path) -> None:
    # Before, the gate compared the masks with the image but not with the sizes the event states:
    # the item was accepted (or sent to a reviewer) and only the trainstore refused it, afterwards.
    # The image and its masks all stated 4000 wide, so the stated sizes agree and only reading tells.
    store = FileStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    generated = matted.generated
    wide = {"width": 4000}
    lying = generated.model_copy(
        update={
            "image": generated.image.model_copy(update=wide),
            "expected_mask": generated.expected_mask.model_copy(update=wide),
        }
    )
    matted = matted.model_copy(
        update={"generated": lying, "predicted_mask": matted.predicted_mask.model_copy(update=wide)}
    )
    with pytest.raises(
        BadInput, match=r"dimension_mismatch: predicted mask .* is 96x96, the event says 4000x96"
    ):
        run_gate(store, matted)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("predicted mask", "predicted_mask"),
        ("expected mask", "expected_mask"),
        ("image", "image"),
        ("reference image", "reference_image"),
        ("reference mask", "reference_mask"),
    ],
)
def test_a_dead_letter_names_which_of_the_items_objects_was_refused(
    tmp_path: Path, name: str, field: str
) -> None:
    # Before, five objects were read and a refusal said only "not_an_image: bytes are not in any
    # known image format": the operator could not tell the matting stage's mask from an ingested photo.
    store = FileStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    generated = matted.generated
    broken = store.put_bytes("fixtures/broken.png", b"not an image")
    if field == "predicted_mask":
        matted = matted.model_copy(
            update={field: matted.predicted_mask.model_copy(update=broken.model_dump())}
        )
    else:
        ref = getattr(generated, field).model_copy(update=broken.model_dump())
        matted = matted.model_copy(update={"generated": generated.model_copy(update={field: ref})})
    with pytest.raises(BadInput) as refused:
        run_gate(store, matted)
    assert refused.value.reason == "not_an_image"
    assert refused.value.detail.startswith(f"{name} {broken.uri}: ")


def test_a_missing_object_is_named_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    generated = matted.generated
    gone = generated.reference_mask.model_copy(update={"uri": store.uri_for("fixtures/gone.png")})
    with pytest.raises(BadInput) as refused:
        run_gate(
            store,
            matted.model_copy(update={"generated": generated.model_copy(update={"reference_mask": gone})}),
        )
    assert (refused.value.reason, refused.value.detail) == (
        "object_missing",
        f"reference mask: no object at {gone.uri}",
    )


def test_every_flag_reason_is_counted_from_zero_so_its_first_flag_after_a_restart_shows(
    tmp_path: Path,
) -> None:
    # Before, a reason's series was born at 1 with its first flag, which rate() and increase() never
    # see: a reason flagged once per pod's life never showed on the flags-by-reason panel.
    registry = build_gate(settings=load_settings(store_uri=f"file://{tmp_path / 'store'}")).metrics.registry
    counts = {
        code: registry.get_sample_value("skuforge_gate_flags_total", {"reason": code}) for code in CHECK_CODES
    }
    assert counts == dict.fromkeys(CHECK_CODES, 0.0)


def test_the_check_codes_are_those_the_gate_reports(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    (emit,) = run_gate(store, matted_item(store, 1, 0))
    assert tuple(check.code for check in emit.payload.checks) == CHECK_CODES  # type: ignore[attr-defined]


@pytest.mark.parametrize(("threshold", "typed"), [("iou_min", "true"), ("min_foreground_fraction", "false")])
def test_a_yes_or_no_category_threshold_is_refused_at_start_up_not_read_as_one_or_zero(
    threshold: str, typed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, true was read as 1.0 and false as 0.0: an IoU minimum of 1 flags nearly every item of
    # the category, a minimum foreground of 0 lets near-empty masks through.
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", f'{{"pouch": {{"{threshold}": {typed}}}}}')
    with pytest.raises(
        ConfigError, match=rf"SKUFORGE_GATE_CATEGORY_OVERRIDES \(pouch\.{threshold}\).*number"
    ):
        load_settings(GateSettings)


def test_whole_numbers_are_still_category_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"drift_tolerance": 25, "iou_min": 1}}')
    thresholds = load_settings(GateSettings).thresholds_for("pouch")
    assert (thresholds.drift_tolerance, thresholds.iou_min) == (25.0, 1.0)


def test_an_item_whose_reference_has_no_product_pixels_goes_to_a_reviewer_not_accepted(
    tmp_path: Path,
) -> None:
    # Before, a reference mask under 64 product pixels skipped the colour-drift check as passed: the
    # item was accepted with no colour check at all. Now it is flagged drift_unchecked and counted.
    store = FileStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    generated = matted.generated
    blank = store.put_image("fixtures/blank-reference-mask.png", np.zeros((96, 96), dtype=np.uint8))
    generated = generated.model_copy(update={"reference_mask": blank})
    event = make_envelope(
        IMAGE_MATTED,
        matted.model_copy(update={"generated": generated}),
        event_id="e" * 32,
        sku_id=generated.sku.sku_id,
        trace_id="t" * 32,
        producer="test",
    )
    ctx = Context("gate", store, Settings(), StageMetrics("gate"), logging.getLogger("test"))
    ctx._handling = event
    registry = CollectorRegistry()
    (emit,) = handle(event, ctx, gate=GateSettings(), metrics=GateMetrics(registry))
    for action in ctx._take_actions(event):  # what the runtime runs once the decision is committed
        action()

    assert emit.topic == CORRECTION_PENDING
    assert emit.payload.reasons == ["drift_unchecked"]  # type: ignore[attr-defined]
    (unchecked,) = [check for check in emit.payload.checks if check.code == "drift_unchecked"]  # type: ignore[attr-defined]
    assert "reference photo has 0 product pixels" in unchecked.message
    assert registry.get_sample_value("skuforge_gate_flags_total", {"reason": "drift_unchecked"}) == 1.0


@pytest.mark.parametrize(
    ("stated", "reason"),
    [({"width": 100_000, "height": 100_000}, "too_many_pixels"), ({"bytes": 10**12}, "too_large_bytes")],
)
def test_an_object_the_event_says_is_over_the_limits_is_refused_before_any_object_is_read(
    tmp_path: Path, stated: dict[str, int], reason: str
) -> None:
    # Before, the predicted and expected masks and the image were read and decoded first (about
    # 0.5 GB at 40 MP) and only then was the reference image refused on the event's own figures.
    store = ReadRecordingStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    generated = matted.generated
    reference = generated.reference_image.model_copy(update=stated)
    matted = matted.model_copy(
        update={"generated": generated.model_copy(update={"reference_image": reference})}
    )
    store.read.clear()
    with pytest.raises(BadInput) as refused:
        run_gate(store, matted)
    assert refused.value.reason == reason
    assert refused.value.detail.startswith(f"reference image {reference.uri}: ")
    assert store.read == []


def _with(matted: ImageMatted, **generated: object) -> ImageMatted:
    return matted.model_copy(update={"generated": matted.generated.model_copy(update=generated)})


@pytest.mark.parametrize("refused_by", ["unreadable reference mask", "masks of different sizes"])
def test_an_item_refused_for_a_mask_never_decodes_an_image(tmp_path: Path, refused_by: str) -> None:
    # Before, the image and the reference photo were read and decoded (about 0.25 GB at 40 MP) ahead
    # of the reference mask, and the masks' sizes were compared only once all five were held.
    store = ReadRecordingStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    if refused_by == "unreadable reference mask":
        broken = store.put_bytes("fixtures/broken.png", b"not an image")
        matted = _with(
            matted, reference_mask=matted.generated.reference_mask.model_copy(update=broken.model_dump())
        )
        reason = "not_an_image"
    else:
        half = store.put_image("fixtures/half.png", np.full((48, 48), 255, dtype=np.uint8))
        matted = matted.model_copy(update={"predicted_mask": half})
        reason = "dimension_mismatch"
    store.read.clear()
    with pytest.raises(BadInput) as refused:
        run_gate(store, matted)
    assert refused.value.reason == reason
    images = {matted.generated.image.uri, matted.generated.reference_image.uri}
    assert images.isdisjoint(store.read)


@pytest.mark.parametrize(
    ("field", "beside"), [("image", "predicted mask"), ("reference_image", "reference mask")]
)
def test_an_image_the_event_says_is_not_its_masks_size_is_refused_before_any_object_is_read(
    tmp_path: Path, field: str, beside: str
) -> None:
    # Before, the masks were read and decoded and then the image too, and only then were their sizes
    # compared. The image here is bytes that would not even decode: refused as dimension_mismatch,
    # not not_an_image, and with nothing read, it was refused on the event's own figures.
    store = ReadRecordingStore(tmp_path / "store")
    matted = matted_item(store, 1, 0)
    broken = store.put_bytes("fixtures/broken.png", b"not an image")
    image = getattr(matted.generated, field).model_copy(update={**broken.model_dump(), "width": 48})
    matted = _with(matted, **{field: image})
    store.read.clear()
    with pytest.raises(BadInput) as refused:
        run_gate(store, matted)
    assert refused.value.reason == "dimension_mismatch"
    assert f"{field.replace('_', ' ')} 96x48 (HxW)" in refused.value.detail
    assert f"{beside} 96x96 (HxW)" in refused.value.detail
    assert store.read == []


def test_the_gate_decides_as_the_checks_do_on_the_whole_item_at_once(tmp_path: Path) -> None:
    # The stage measures the masks first and then each image on its own, so as not to hold all five
    # decoded objects at once; every check's figure and message must be those of ``evaluate``.
    store = FileStore(tmp_path / "store")
    exact = matted_item(store, 1, 0)
    photo = np.asarray(decode_image(store.read_verified(exact.generated.image)))
    painted = photo.copy()
    painted[decode_mask(store.read_verified(exact.generated.expected_mask)) > 0] = (20, 200, 40)
    blank = store.put_image("fixtures/blank.png", np.zeros((96, 96), dtype=np.uint8))
    full = store.put_image("fixtures/full.png", np.full((96, 96), 255, dtype=np.uint8))
    items = [
        exact,
        matted_item(store, 2, 1, predicted="shifted"),
        matted_item(store, 3, 2, predicted="empty"),
        _with(exact, image=store.put_image("fixtures/painted.png", painted)),
        _with(exact, reference_mask=blank),
        exact.model_copy(update={"predicted_mask": full}),
        _with(exact, colour_gain=(1.3, 1.1, 0.8)),
        _with(exact, colour_gain=(3.0, 1.0, 1.0)),
    ]
    decisions = set()
    for matted in items:
        (emit,) = run_gate(store, matted)
        generated = matted.generated
        iou, checks = evaluate(
            predicted_mask=decode_mask(store.read_verified(matted.predicted_mask)),
            expected_mask=decode_mask(store.read_verified(generated.expected_mask)),
            image=np.asarray(decode_image(store.read_verified(generated.image))),
            reference_image=np.asarray(decode_image(store.read_verified(generated.reference_image))),
            reference_mask=decode_mask(store.read_verified(generated.reference_mask)),
            thresholds=GateSettings().thresholds_for(generated.sku.category),
            colour_gain=generated.colour_gain,
        )
        assert (emit.payload.iou, emit.payload.checks) == (iou, checks)  # type: ignore[attr-defined]
        assert emit.topic == (CORRECTION_PENDING if failed_reasons(checks) else GATE_ACCEPTED)
        decisions.add((emit.topic.name, tuple(failed_reasons(checks))))
    # The items between them fail every check (and pass them all once).
    assert {reason for _, reasons in decisions for reason in reasons} == set(CHECK_CODES)
    assert (GATE_ACCEPTED.name, ()) in decisions
