"""An event dated far ahead of the console's clock is dead-lettered as ``clock_skew``, not queued.

The console orders the gate's verdicts of an item by the envelope's ``produced_at`` (a flag newer than
the acceptance that closed its task opens it again; an acceptance older than the flag a task shows
leaves it open). Before, a flag dated year 9999 (a producer's clock far ahead, or a hostile producer)
was queued, and every later real acceptance of the item was "older" and left the task waiting for good.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kafka.structs import TopicPartition

from schemas.envelope import DeadLetter, Envelope, utc_now
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED, Topic
from services.console.intake import build_intake_stage
from shared.config import load_settings
from shared.runtime import Stage
from tests.support.console import (
    ConsoleParts,
    accepted_envelope,
    flagged_item,
    flagged_parts_fixture,
    pending_envelope,
)
from tests.support.runtime import _Producer, _record, _wired

parts = flagged_parts_fixture(0)


def _intake(parts: ConsoleParts, **kwargs: Any) -> tuple[Stage, _Producer]:
    stage = build_intake_stage(parts.tasks, settings=load_settings(), **kwargs)
    _, producer = _wired(stage)
    return stage, producer


def _deliver(stage: Stage, topic: Topic[Any], envelope: Envelope[Any], offset: int) -> None:
    tp = TopicPartition(stage.settings.topic_name(topic), 0)
    stage._process_batch({tp: [_record(tp.topic, offset, envelope.model_dump_json().encode())]})


def test_a_flag_dated_year_9999_is_dead_lettered_and_a_later_acceptance_closes_the_real_flag(
    parts: ConsoleParts,
) -> None:
    stage, producer = _intake(parts)
    pending = pending_envelope(flagged_item(parts.store, 0))
    far_future = pending.model_copy(update={"produced_at": datetime(9999, 1, 1, tzinfo=UTC)})

    _deliver(stage, CORRECTION_PENDING, far_future, 0)

    [(dlq, value)] = producer.acked
    letter = DeadLetter.model_validate_json(value)
    assert dlq == stage.settings.topic_name(CORRECTION_PENDING) + ".dlq"
    assert letter.reason == "clock_skew"
    assert "SKUFORGE_CONSOLE_MAX_CLOCK_AHEAD_S" in letter.detail and "9999" in letter.detail
    assert parts.tasks.count() == 0

    # The real flag, then the gate's acceptance a minute later: the task closes as accepted.
    _deliver(stage, CORRECTION_PENDING, pending, 1)
    accepted = accepted_envelope(pending, produced_at=pending.produced_at + timedelta(seconds=60))
    _deliver(stage, GATE_ACCEPTED, accepted, 0)
    assert len(producer.acked) == 1
    assert parts.tasks.get(pending.event_id).state == "accepted"


def test_an_acceptance_dated_far_ahead_is_dead_lettered_and_leaves_the_task_waiting(
    parts: ConsoleParts,
) -> None:
    stage, producer = _intake(parts)
    pending = pending_envelope(flagged_item(parts.store, 0))
    _deliver(stage, CORRECTION_PENDING, pending, 0)

    accepted = accepted_envelope(pending, produced_at=utc_now() + timedelta(days=1))
    _deliver(stage, GATE_ACCEPTED, accepted, 0)

    [(dlq, value)] = producer.acked
    assert dlq == stage.settings.topic_name(GATE_ACCEPTED) + ".dlq"
    assert DeadLetter.model_validate_json(value).reason == "clock_skew"
    assert parts.tasks.get(pending.event_id).state == "pending"


def test_an_event_within_the_allowed_skew_is_queued(parts: ConsoleParts) -> None:
    stage, producer = _intake(parts, max_clock_ahead_s=120.0)
    pending = pending_envelope(flagged_item(parts.store, 0))
    ahead = pending.model_copy(update={"produced_at": utc_now() + timedelta(seconds=60)})

    _deliver(stage, CORRECTION_PENDING, ahead, 0)

    assert producer.acked == []
    assert parts.tasks.get(pending.event_id).state == "pending"
