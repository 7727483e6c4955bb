"""Review items of the stage runtime, driven through its consumer/producer seams: outputs the broker
refuses for good, inputs a failed commit left when the watchdog rejoins, a micro-batch's record that
must wait.

The real broker's refusal (an output topic's ``max.message.bytes``) is in tests/test_producer_stopped.py;
here a fake producer refuses what a test names and, as kafka-python's idempotent producer does, fails
every other send of the same flush with the same error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import TopicPartition

from schemas.envelope import DeadLetter, Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared import runtime
from shared.config import load_settings
from shared.runtime import Context, Emit, Stage
from tests.support.bus import file_store_uri, ingested_envelope, sku_ingested_payloads
from tests.support.runtime import _Consumer, _Producer, _record


class _RefusingProducer(_Producer):
    """Refuses for good the output about ``refused_sku`` (and every dead letter, ``dlq_too``); the other
    sends of a flush with a refused one fail with the same error."""

    def __init__(self, refused_sku: str, dlq_too: bool = False) -> None:
        super().__init__()
        self.refused_sku = refused_sku.encode()
        self.dlq_too = dlq_too

    def _refuses(self, topic: str, value: bytes) -> bool:
        if topic.endswith(".dlq"):
            return self.dlq_too
        return self.refused_sku in value

    def flush(self, timeout: float | None = None) -> None:
        pending, self._pending = self._pending, []
        refused = [(topic, value) for topic, value, _ in pending if self._refuses(topic, value)]
        for topic, value, future in pending:
            if refused:
                future.error = MessageSizeTooLargeError(f"{topic}: over max.message.bytes")
            else:
                future.error = None
                self.acked.append((topic, value))


def _stage_of_three(tmp_path: Path) -> tuple[Stage, TopicPartition, list[ConsumerRecord]]:
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path)))

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]

    topic = stage.settings.topic_name(SKU_INGESTED)
    records = [
        _record(topic, offset, ingested_envelope(payload).model_dump_json().encode())
        for offset, payload in enumerate(sku_ingested_payloads(stage.store, 3))
    ]
    return stage, TopicPartition(topic, 0), records


def _wired_with(stage: Stage, producer: _Producer) -> _Consumer:
    consumer = _Consumer()
    stage._consumer = consumer
    stage._producer = producer
    return consumer


def test_an_input_whose_output_is_refused_for_good_is_dead_lettered_and_the_others_go_once(
    tmp_path: Path,
) -> None:
    stage, tp, records = _stage_of_three(tmp_path)
    producer = _RefusingProducer("SKU-00001")
    consumer = _wired_with(stage, producer)
    stage._process_batch({tp: records})
    out = stage.settings.topic_name(PASSTHROUGH_OUT)
    assert [topic for topic, _ in producer.acked] == [out, tp.topic + ".dlq", out]
    letter = DeadLetter.model_validate_json(producer.acked[1][1])
    assert (letter.reason, letter.sku_id, letter.original_offset) == ("output_refused", "SKU-00001", 1)
    assert out in letter.detail and "MessageSizeTooLargeError" in letter.detail
    assert consumer.committed == {tp: 3} and not consumer.paused
    dlq_total = stage.metrics.registry.get_sample_value(
        "skuforge_dlq_total", {"stage": "review", "topic": tp.topic, "reason": "output_refused"}
    )
    assert dlq_total == 1


def test_a_refused_output_whose_dead_letter_is_refused_too_waits_after_committing_the_inputs_before_it(
    tmp_path: Path,
) -> None:
    """Nothing to dead-letter the letter to: the partition backs off at the input (nothing is lost), and
    the input before it, whose output went, is committed rather than sent again."""
    stage, tp, records = _stage_of_three(tmp_path)
    producer = _RefusingProducer("SKU-00001", dlq_too=True)
    consumer = _wired_with(stage, producer)
    stage._process_batch({tp: records})
    assert [topic for topic, _ in producer.acked] == [stage.settings.topic_name(PASSTHROUGH_OUT)]
    assert consumer.committed == {tp: 1}
    assert consumer.positions == {tp: 1} and consumer.paused == {tp}


class _RejoiningConsumer(_Consumer):
    """The fake consumer, plus what the watchdog's rejoin touches: assignment, metadata, (un)subscribe."""

    def __init__(self, held: set[TopicPartition]) -> None:
        super().__init__(commit_error=KafkaTimeoutError("commit timed out"))
        self.held = held
        self.calls: list[str] = []
        self.config = {"group_id": "g.review"}
        self._cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0, 1})

    def assignment(self) -> set[TopicPartition]:
        return set(self.held)

    def unsubscribe(self) -> None:
        self.calls.append(f"unsubscribe, committed {self.committed}")
        self.held = set()

    def subscribe(self, topics: list[str], listener: object = None) -> None:
        self.calls.append("subscribe")


def test_inputs_whose_commit_failed_are_committed_before_the_watchdog_leaves_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the rejoin dropped them: their outputs had gone, but the group's offset stayed before
    them, so whoever held the partition next handled them again and sent their outputs twice."""
    monkeypatch.setattr(runtime, "REJOIN_FIRST_S", 0.0)
    monkeypatch.setattr(runtime, "topics_held_in_group", lambda *args: set())
    stage, tp, records = _stage_of_three(tmp_path)
    stage.handler(PASSTHROUGH_OUT)(lambda event, ctx: [])  # a second input topic, of which it holds none
    consumer = _RejoiningConsumer(held={tp})
    stage._consumer = consumer
    stage._producer = _Producer()
    stage._process_batch({tp: records})
    assert consumer.committed == {}  # the broker did not answer the commit
    consumer.commit_error = None  # and answers again
    stage._joined = True
    for _ in range(2):  # first seen without the topic, then rejoin
        stage._last_assignment_check = 0.0
        stage._check_assignment()
    assert consumer.calls == [f"unsubscribe, committed { ({tp: 3}) }", "subscribe"]
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 3


def _sample(stage: Stage, name: str, **labels: str) -> float:
    value = stage.metrics.registry.get_sample_value(name, {"stage": stage.name, **labels})
    return value or 0.0


def test_a_micro_batch_leaves_out_the_records_after_one_that_must_wait(tmp_path: Path) -> None:
    """A record whose dead letter cannot be written yet rewinds its partition to it: before, the records
    after it went to the batch handler all the same (model work thrown away, and done again after the
    back-off); the other partitions' records still go."""
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path)))
    handled: list[str] = []

    @stage.batch_handler(SKU_INGESTED)
    def handle(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[list[Emit]]:
        handled.extend(event.sku_id for event in events)
        return [[Emit(PASSTHROUGH_OUT, event.payload, key="out")] for event in events]

    topic = stage.settings.topic_name(SKU_INGESTED)
    values = [
        ingested_envelope(payload).model_dump_json().encode()
        for payload in sku_ingested_payloads(stage.store, 3)
    ]
    huge = b"x" * (runtime.DLQ_INLINE_MAX_BYTES + 1)  # not JSON, and kept in the store for its letter
    digest = hashlib.sha256(huge).hexdigest()[:16]
    in_the_way = tmp_path / runtime.DLQ_ORIGINALS_PREFIX / topic / f"0-1-{digest}.value" / "a folder"
    in_the_way.mkdir(parents=True)
    tp, other = TopicPartition(topic, 0), TopicPartition(topic, 1)
    waiting = [_record(topic, 0, values[0]), _record(topic, 1, huge), _record(topic, 2, values[1])]
    consumer = _wired_with(stage, _Producer())
    stage._process_batch({tp: waiting, other: [_record(topic, 5, values[2])._replace(partition=1)]})
    assert handled == ["SKU-00000", "SKU-00002"]
    assert consumer.committed == {tp: 1, other: 6} and consumer.positions == {tp: 1}
