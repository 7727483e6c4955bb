"""Trainstore, review 36: an image of a SKU whose mask marks no product is not training data.

The gate flags an empty predicted mask whatever its thresholds (``mask_empty``), but what reaches the
trainstore is not only the gate's: a reviewer's approval of an empty mask, or an event another producer
(an older gate, a replay) wrote. Stored, such an item is a photo labelled as the SKU with no product
marked in it, and ``dataset export`` hands it to the classifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.envelope import DeadLetter
from schemas.events import GateAccepted
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import build_stage as build_trainstore
from shared.config import load_settings
from shared.trainstore.loader import load_manifest
from shared.trainstore.settings import TrainstoreSettings
from tests.support.bus import create_topics, isolated_settings, read_topic, running, wait_consumed
from tests.support.gate import matted_item, produce_events, resolved

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PREFIX = "trainstore"


def test_an_item_whose_mask_marks_no_product_is_dead_lettered_and_the_others_are_stored(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, GATE_ACCEPTED, CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED)
    stage = build_trainstore(
        settings=settings, trainstore=load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    )
    store = stage.store
    empty_accepted = matted_item(store, 41, 0, predicted="empty")
    empty_approved = matted_item(store, 42, 0, predicted="empty")
    produce_events(
        settings,
        GATE_ACCEPTED,
        [
            GateAccepted(matted=empty_accepted, iou=1.0, checks=[]),
            GateAccepted(matted=matted_item(store, 43, 0), iou=1.0, checks=[]),
        ],
    )
    produce_events(
        settings,
        CORRECTION_RESOLVED,
        [
            resolved(store, empty_approved, "approve_predicted", final_mask=empty_approved.predicted_mask),
            resolved(store, matted_item(store, 44, 0, predicted="empty"), "approve_expected"),
        ],
    )

    with running(stage):
        letters = read_topic(kafka_bootstrap, settings.dlq_name(GATE_ACCEPTED), expect=1)
        letters += read_topic(kafka_bootstrap, settings.dlq_name(CORRECTION_RESOLVED), expect=1)
        wait_consumed(settings, "trainstore", (GATE_ACCEPTED, CORRECTION_RESOLVED))

    by_sku = {letter.sku_id: letter for letter in (DeadLetter.model_validate_json(r.value) for r in letters)}
    assert {sku_id: letter.reason for sku_id, letter in by_sku.items()} == {
        "SKU-041": "mask_empty",
        "SKU-042": "mask_empty",
    }
    assert f"predicted mask {empty_accepted.predicted_mask.uri}" in by_sku["SKU-041"].detail
    assert f"final mask {empty_approved.predicted_mask.uri}" in by_sku["SKU-042"].detail
    assert "no product" in by_sku["SKU-042"].detail
    rows = load_manifest(store, prefix=PREFIX, trainable_only=False)
    assert {(row["sku_id"], row["status"]) for row in rows} == {
        ("SKU-043", "accepted"),
        ("SKU-044", "approved"),  # the expected mask approved: the product is marked
    }
    assert not list(store.list_keys(f"{PREFIX}/images/SKU-041")) + list(
        store.list_keys(f"{PREFIX}/images/SKU-042")
    )
