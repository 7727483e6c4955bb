"""A decision the broker refuses for good (over the topic's max.message.bytes) is set aside with the
broker's reason, and the relay goes on with the next: before, the refusal read as a broker outage, so
the relay retried that decision forever and the ones behind it never went out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from schemas.topics import CORRECTION_RESOLVED
from services.console.decisions import MAX_REASON_CHARS
from services.console.relay import DecisionRelay
from services.console.tasks import PRODUCER, OutboxEvent, TaskStore
from shared.bus import make_envelope
from skuforge_cli.main import main as cli_main
from tests.support.bus import isolated_settings, read_topic
from tests.support.console import (
    build_console,
    decide_as_alice,
    flagged_item,
    outbox_from_before_refusals,
    pending_envelope,
    use_cli_on,
)
from tests.support.kafka import session_admin

pytestmark = pytest.mark.kafka


def _sent_bytes(event: OutboxEvent) -> int:
    """The length of the record value the relay sends for ``event``."""
    envelope = make_envelope(
        CORRECTION_RESOLVED,
        event.payload,
        event_id=event.event_id,
        sku_id=event.sku_id,
        trace_id=event.trace_id,
        producer=PRODUCER,
        produced_at=event.produced_at,
    )
    return len(envelope.model_dump_json().encode())


def test_a_decision_the_broker_refuses_is_set_aside_with_its_reason_and_the_next_is_sent(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    parts = build_console(tmp_path, settings=settings)
    refused = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(refused)
    decide_as_alice(parts, refused.event_id, "reject", "x" * MAX_REASON_CHARS)
    parts.clock.advance(1.0)  # the refused one is the oldest in the outbox, sent first
    sent = pending_envelope(flagged_item(parts.store, 1)).event_id
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 1)))
    decide_as_alice(parts, sent, "reject", "x")
    big, small = (_sent_bytes(event) for event in parts.tasks.unpublished())
    assert big > small + 100  # a batch adds over 60 bytes: small + 150 refuses it
    # The short rejection fits in one record (a batch adds well under 150 bytes); the long rejection does not.
    topic = settings.topic_name(CORRECTION_RESOLVED)
    session_admin(kafka_bootstrap).create_topics(
        [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(small + 150)})]
    )

    relay = DecisionRelay(parts.tasks, settings)
    try:
        assert relay.publish_pending() == 1
        assert relay.publish_pending() == 0  # set aside, not tried again
    finally:
        relay.close()

    [record] = read_topic(kafka_bootstrap, topic, expect=1)
    assert sent.encode() in record.value
    assert parts.tasks.unpublished() == []
    assert parts.tasks.unpublished_count() == 0
    outbox = parts.tasks.outbox(refused.event_id)
    assert outbox is not None and outbox.published_at is None
    assert outbox.refused_reason is not None and "MessageSizeTooLargeError" in outbox.refused_reason
    assert parts.tasks.refused_count() == 1


def test_an_outbox_made_before_refusals_is_given_the_column_with_nothing_refused(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    task = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(task)
    decide_as_alice(parts, task.event_id, "reject", "x")
    outbox_from_before_refusals(parts.tasks.path)

    tasks = TaskStore(parts.tasks.path)
    assert [event.task_id for event in tasks.unpublished()] == [task.event_id]
    assert tasks.refused_count() == 0
    with sqlite3.connect(parts.tasks.path) as db:
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'outbox'")}
    assert {"outbox_unsent", "outbox_refused"} <= indexes


def test_a_refused_decision_resent_once_the_topic_takes_it_is_published(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's path (``skuforge console resend``) on the real broker: raised max.message.bytes,
    the decision it refused goes out on the relay's next round."""
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    parts = build_console(tmp_path, settings=settings)
    refused = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(refused)
    decide_as_alice(parts, refused.event_id, "reject", "x" * MAX_REASON_CHARS)
    [event] = parts.tasks.unpublished()
    topic = settings.topic_name(CORRECTION_RESOLVED)
    admin = session_admin(kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "200"})])
    relay = DecisionRelay(parts.tasks, settings)
    try:
        assert relay.publish_pending() == 0
        assert parts.tasks.refused_count() == 1
        big_enough = str(_sent_bytes(event) + 1000)
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": big_enough})]
        )
        use_cli_on(parts, monkeypatch)
        assert cli_main(["console", "resend", refused.event_id]) == 0
        assert relay.publish_pending() == 1
    finally:
        relay.close()

    [record] = read_topic(kafka_bootstrap, topic, expect=1)
    assert event.event_id.encode() in record.value
    assert parts.tasks.refused_count() == 0
    outbox = parts.tasks.outbox(refused.event_id)
    assert outbox is not None and outbox.published_at is not None
