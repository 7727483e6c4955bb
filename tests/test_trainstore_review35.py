"""Trainstore, bad input on the real broker: a reviewer's decision or a SKU's photos the stage cannot
store are dead-lettered with a reason that names the object refused, nothing of them is written, and
the events around them are stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.common import ImageRef
from schemas.envelope import DeadLetter
from schemas.events import CorrectionResolved, SkuCaptioned
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import build_stage as build_trainstore
from shared.config import load_settings
from shared.store import ObjectStore
from shared.trainstore.loader import load_manifest
from shared.trainstore.settings import TrainstoreSettings
from tests.support.bus import create_topics, isolated_settings, read_topic, running, wait_consumed
from tests.support.gate import captioned, matted_item, produce_events, resolved

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PREFIX = "trainstore"


def _truncated(store: ObjectStore, ref: ImageRef, key: str) -> ImageRef:
    """``ref``'s PNG with its last bytes cut, stored honestly (its own sha256): only decoding fails."""
    stored = store.put_bytes(key, store.get_bytes(ref.uri)[:-30])
    return ref.model_copy(update={"uri": stored.uri, "sha256": stored.sha256, "bytes": stored.bytes})


def _with_truncated_mask(store: ObjectStore, event: SkuCaptioned, photo_index: int) -> SkuCaptioned:
    photos = list(event.photos)
    photo = photos[photo_index]
    assert photo.mask is not None
    mask = _truncated(store, photo.mask, f"fixtures/truncated-{photo.photo_id}.png")
    photos[photo_index] = photo.model_copy(update={"mask": mask})
    return event.model_copy(update={"photos": photos})


def test_bad_decisions_and_photos_are_dead_lettered_naming_the_object_and_the_rest_are_stored(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Before: a refusal of an object's bytes said only "truncated: PNG pixel data: image file is
    # truncated", not which of the event's objects (an image or a mask, of which of ten photos).
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, GATE_ACCEPTED, CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED)
    stage = build_trainstore(
        settings=settings, trainstore=load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    )
    store = stage.store
    truncated_item = matted_item(store, 31, 0, predicted="shifted")
    truncated_mask = _truncated(store, truncated_item.generated.expected_mask, "fixtures/truncated-final.png")
    no_mask = resolved(store, matted_item(store, 32, 0, predicted="shifted"), "approve_expected")
    other_size = store.put_image("fixtures/final-32px.png", np.full((32, 32), 255, np.uint8))
    resized_item = matted_item(store, 33, 0, predicted="shifted")
    decisions: list[CorrectionResolved] = [
        resolved(store, truncated_item, "approve_edited", final_mask=truncated_mask),
        no_mask.model_copy(update={"final_mask": None}),
        resolved(store, resized_item, "approve_edited", final_mask=other_size),
        resolved(store, matted_item(store, 34, 0, predicted="shifted"), "approve_expected"),
    ]
    photos = [_with_truncated_mask(store, captioned(store, 35, photos=3), 1), captioned(store, 36)]
    produce_events(settings, CORRECTION_RESOLVED, list(decisions))
    produce_events(settings, SKU_CAPTIONED, list(photos))

    with running(stage):
        decision_letters = read_topic(kafka_bootstrap, settings.dlq_name(CORRECTION_RESOLVED), expect=3)
        photo_letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_CAPTIONED), expect=1)
        wait_consumed(settings, "trainstore", (CORRECTION_RESOLVED, SKU_CAPTIONED))

    letters = {
        letter.sku_id: letter
        for letter in (DeadLetter.model_validate_json(r.value) for r in decision_letters + photo_letters)
    }
    assert {sku_id: letter.reason for sku_id, letter in letters.items()} == {
        "SKU-031": "truncated",
        "SKU-032": "final_mask_missing",
        "SKU-033": "dimension_mismatch",
        "SKU-035": "truncated",
    }
    assert f"final mask {truncated_mask.uri}: " in letters["SKU-031"].detail
    masked_photo = photos[0].photos[1]
    assert masked_photo.mask is not None
    assert f"mask of photo p1 {masked_photo.mask.uri}: " in letters["SKU-035"].detail
    assert other_size.uri in letters["SKU-033"].detail
    rows = load_manifest(store, prefix=PREFIX, trainable_only=False)
    stored = {(row["sku_id"], row["item_id"], row["status"]) for row in rows}
    assert stored == {
        ("SKU-034", "gen-034-00", "approved"),
        ("SKU-036", "p0", "reference"),
        ("SKU-036", "p1", "reference"),
        ("SKU-036", "p-blurry", "unusable"),
    }
