"""Gate, bad input on the real broker: an object the event names that the file store cannot open for
good is dead-lettered with its reason, and the items around it are decided."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.envelope import DeadLetter, Envelope
from schemas.events import GateAccepted
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED, IMAGE_MATTED
from services.gate.config import GateSettings
from services.gate.stage import build_stage as build_gate
from shared.config import load_settings
from tests.support.bus import create_topics, isolated_settings, read_topic, running
from tests.support.gate import matted_item, produce_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_mask_that_is_a_symlink_loop_is_dead_lettered_as_missing_and_the_next_items_go_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Before: opening the loop failed with ELOOP, which the file store reported as an outage
    # (TransientError), so the gate retried the item for good and its partition stalled behind it,
    # while the store's exists() already called the same key no object.
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, IMAGE_MATTED, GATE_ACCEPTED, CORRECTION_PENDING, partitions=1)
    gate = build_gate(settings=settings, gate=load_settings(GateSettings))
    store = gate.store
    before, looped, after = (matted_item(store, index, 0) for index in (21, 22, 23))
    mask_path = tmp_path / "store" / store.key_for(looped.predicted_mask.uri)
    mask_path.unlink()
    mask_path.symlink_to(mask_path.name)  # a link to itself: never a file
    produce_events(settings, IMAGE_MATTED, [before, looped, after])

    with running(gate):
        letters = read_topic(kafka_bootstrap, settings.dlq_name(IMAGE_MATTED), expect=1)
        accepted = read_topic(kafka_bootstrap, settings.topic_name(GATE_ACCEPTED), expect=2)

    [letter] = [DeadLetter.model_validate_json(record.value) for record in letters]
    assert (letter.sku_id, letter.reason) == ("SKU-022", "object_missing")
    assert "predicted mask" in letter.detail and looped.predicted_mask.uri in letter.detail
    assert "symbolic link" in letter.detail
    assert [Envelope[GateAccepted].model_validate_json(r.value).sku_id for r in accepted] == [
        "SKU-021",
        "SKU-023",
    ]
