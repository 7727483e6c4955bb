"""A fake consumer and producer for driving ``Stage._process_batch`` without a broker, and ``_record``,
the ``ConsumerRecord`` they feed it.

``_wired`` puts both on a stage: the consumer records seeks, pauses and commits, the producer
acknowledges sends on flush unless told to fail, so a test sets up exactly the failure it is about.
``_StoppingConsumer`` is what ``Stage.run`` needs of a consumer to start and stop at its first poll.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition

from bench.events import key_for
from schemas.envelope import DeadLetter
from schemas.topics import DLQ_SUFFIX, SKU_INGESTED, Topic
from shared.config import load_settings
from shared.runtime import Emit, Stage


class _Consumer:
    """What ``_process_batch`` touches of a KafkaConsumer: seek, pause, commit."""

    def __init__(self, commit_error: KafkaError | None = None) -> None:
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.commit_error = commit_error

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})


class _StoppingConsumer:
    """Joins a stable group holding nothing and stops ``stage`` at its first poll, as a SIGTERM would;
    its ``close`` raises ``close_error`` if given."""

    _cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0})

    def __init__(self, stage: Stage, close_error: Exception | None = None) -> None:
        self.stage = stage
        self.close_error = close_error

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.stage.stop()
        return {}

    def assignment(self) -> set[TopicPartition]:
        return set()

    def group_metadata(self) -> SimpleNamespace:
        return SimpleNamespace(state=MemberState.STABLE)

    def close(self, autocommit: bool = False) -> None:
        if self.close_error is not None:
            raise self.close_error


class _Acked:
    """A send's result: acknowledged once a flush that did not fail took it (kafka-python's future)."""

    def __init__(self) -> None:
        self.error: KafkaError | None = KafkaTimeoutError("not flushed")

    def succeeded(self) -> bool:
        return self.error is None

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


class _Producer:
    """Acknowledges everything sent on flush, or loses it all with a timeout when ``fail_flush``."""

    def __init__(self) -> None:
        self.fail_flush = False
        self.closed = False
        self.acked: list[tuple[str, bytes]] = []
        self._pending: list[tuple[str, bytes, _Acked]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> _Acked:
        future = _Acked()
        self._pending.append((topic, value, future))
        return future

    def flush(self, timeout: float | None = None) -> None:
        pending, self._pending = self._pending, []
        if self.fail_flush:
            raise KafkaTimeoutError("the broker did not acknowledge in time")
        for topic, value, future in pending:
            future.error = None
            self.acked.append((topic, value))

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def _wired(stage: Stage, consumer: _Consumer | None = None) -> tuple[_Consumer, _Producer]:
    consumer = consumer or _Consumer()
    producer = _Producer()
    stage._consumer = consumer
    stage._producer = producer
    return consumer, producer


def _record(topic: str, offset: int, value: bytes) -> ConsumerRecord:
    key = key_for(value)  # keyed by its SKU, as every skuforge producer keys
    return ConsumerRecord(topic, 0, -1, offset, 0, 0, key, value, [], None, len(key), len(value), -1)


def dead_letter_for(tmp_path: Path, written: dict[str, Any], topic: Topic[Any] = SKU_INGESTED) -> DeadLetter:
    """The one dead letter a stage consuming ``topic`` (sku.ingested) writes for the record ``written``."""
    stage = Stage("review", settings=load_settings(store_uri=f"file://{tmp_path}"))
    stage.handler(topic)(lambda event, ctx: list[Emit]())
    _, producer = _wired(stage)
    tp = TopicPartition(stage.settings.topic_name(topic), 0)
    stage._process_batch({tp: [_record(tp.topic, 0, json.dumps(written).encode())]})
    [(topic_name, value)] = producer.acked
    assert topic_name == tp.topic + DLQ_SUFFIX
    return DeadLetter.model_validate_json(value)
