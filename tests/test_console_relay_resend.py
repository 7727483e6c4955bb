"""A decision sent again (a crash between the broker's ack and marking it published, or two relays at
once) is the same message: the trainstore orders an item's rows by the envelope's ``produced_at``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from schemas.envelope import Envelope
from schemas.events import CorrectionResolved
from schemas.topics import CORRECTION_RESOLVED
from services.console.relay import DecisionRelay
from tests.support.bus import create_topics, isolated_settings, read_topic
from tests.support.console import build_console, decided

pytestmark = pytest.mark.kafka


def test_a_decision_sent_again_is_byte_identical_to_its_first_send(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, CORRECTION_RESOLVED)
    parts = build_console(tmp_path, settings=settings)
    [task_id] = decided(parts, 1)
    relay = DecisionRelay(parts.tasks, settings)
    try:
        assert relay.publish_pending() == 1
        # The relay crashed after the broker's ack, before it marked the decision published.
        with sqlite3.connect(parts.tasks.path) as db:
            db.execute("UPDATE outbox SET published_at = NULL WHERE task_id = ?", (task_id,))
        parts.clock.advance(600.0)
        assert relay.publish_pending() == 1
    finally:
        relay.close()

    records = read_topic(kafka_bootstrap, settings.topic_name(CORRECTION_RESOLVED), expect=2)
    assert len(records) == 2
    assert records[1].value == records[0].value
    # Dated when the decision was recorded, not when it was (last) sent: a resend of an old decision
    # does not outrank what the item's other events say since.
    event = Envelope[CorrectionResolved].model_validate_json(records[0].value)
    assert event.produced_at == event.payload.decided_at
