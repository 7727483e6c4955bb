"""The runtime: a partition that backed off, moved to another member and came back (on the real broker);
the outputs counted of a partition sent again one by one and rewound part way; a poison record whose
partition moves away and back between its attempts; a consumer whose close fails at the stop."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import TopicPartition

from schemas.envelope import DeadLetter, Envelope
from schemas.events import SkuIngested
from schemas.topics import DLQ_SUFFIX, PASSTHROUGH_OUT, SKU_INGESTED
from shared import runtime
from shared.config import load_settings
from shared.errors import TransientError
from shared.runtime import Context, Emit, Stage
from tests.support.bus import (
    create_topics,
    file_store_uri,
    ingested_envelope,
    isolated_settings,
    produce,
    running,
    sku_ingested_payloads,
)
from tests.support.polling import wait_for
from tests.support.runtime import _Consumer, _Producer, _record, _StoppingConsumer, _wired


@pytest.mark.kafka
def test_a_backed_off_partition_that_moves_away_and_back_is_consumed_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """kafka-python parks the records it had fetched for a partition that is paused, and never fetches a
    partition with parked records while another partition's records are next in line; the runtime drops
    them when it resumes a partition. A partition revoked while it backed off is never resumed here:
    before, when the group handed it back, it was never fetched again, and its SKUs waited for good."""
    # A back-off longer than the test: the partition comes back only through the rebalance.
    settings = isolated_settings(
        kafka_bootstrap,
        file_store_uri(tmp_path),
        max_poll_records=1,
        retry_backoff_initial_s=600.0,
        retry_backoff_max_s=600.0,
    )
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    ingested = TopicPartition(settings.topic_name(SKU_INGESTED), 0)
    store_down = threading.Event()
    store_down.set()
    handled: list[str] = []

    first = Stage("review", settings=settings)

    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        if store_down.is_set():
            raise TransientError("the store is away")
        handled.append(event.event_id)
        return []

    first.handler(SKU_INGESTED)(handle)
    # A second input topic, whose records keep flowing while sku.ingested waits.
    first.handler(PASSTHROUGH_OUT)(handle)

    # Its sku.ingested partition only: the group moves that partition to it.
    second = Stage("review", settings=settings)

    @second.handler(SKU_INGESTED)
    def refuse(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        raise TransientError("the store is away here too")

    inputs = produce(settings, SKU_INGESTED, list(sku_ingested_payloads(first.store, 4)))
    with running(first):
        wait_for("the first input to back off", lambda: ingested in first._resume_at)
        store_down.clear()
        flowing = produce(settings, PASSTHROUGH_OUT, list(sku_ingested_payloads(first.store, 3)))
        wait_for("the other topic's inputs", lambda: set(flowing) <= set(handled))
        with running(second):
            wait_for("the partition to move", lambda: ingested in second._resume_at)
        wait_for("the partition's inputs, once it came back", lambda: set(inputs) <= set(handled), 60)


class _PartlyAckingProducer(_Producer):
    """Refuses for good the output about ``refused_sku`` and acknowledges the other outputs of its flush
    (theirs went before the refusal); dead letters time out while ``dlq_away``."""

    def __init__(self, refused_sku: str) -> None:
        super().__init__()
        self.refused_sku = refused_sku.encode()
        self.dlq_away = True

    def flush(self, timeout: float | None = None) -> None:
        pending, self._pending = self._pending, []
        for topic, value, future in pending:
            if topic.endswith(DLQ_SUFFIX) and self.dlq_away:
                future.error = KafkaTimeoutError("the broker did not acknowledge in time")
            elif not topic.endswith(DLQ_SUFFIX) and self.refused_sku in value:
                future.error = MessageSizeTooLargeError(f"{topic}: over max.message.bytes")
            else:
                future.error = None
                self.acked.append((topic, value))


def test_outputs_of_inputs_rewound_after_a_refusal_are_counted_once_delivered(tmp_path: Path) -> None:
    """The first input's output is refused for good and its dead letter cannot be sent yet: the partition
    is rewound to it, and the two inputs after it, whose outputs were acknowledged, are sent again once
    it goes. Before, their outputs were counted in skuforge_produced_total then and again after the
    rewind; a partition rewound whole counts them only when its inputs are delivered."""
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path)))

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]

    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    records = [
        _record(tp.topic, offset, ingested_envelope(payload).model_dump_json().encode())
        for offset, payload in enumerate(sku_ingested_payloads(stage.store, 3))
    ]
    consumer, producer = _Consumer(), _PartlyAckingProducer("SKU-00000")
    stage._consumer = consumer
    stage._producer = producer
    out = stage.settings.topic_name(PASSTHROUGH_OUT)

    def produced(topic: str) -> float:
        labels = {"stage": "review", "topic": topic}
        return stage.metrics.registry.get_sample_value("skuforge_produced_total", labels) or 0.0

    stage._process_batch({tp: records})
    assert consumer.positions == {tp: 0} and not consumer.committed
    producer.dlq_away = False
    stage._process_batch({tp: records})  # the partition's retry

    assert consumer.committed == {tp: 3}
    assert (produced(out), produced(tp.topic + DLQ_SUFFIX)) == (2, 1)


def test_a_poison_record_reaches_the_dlq_though_its_partition_moves_away_and_back_between_attempts(
    tmp_path: Path,
) -> None:
    """Its failed attempts are counted on when the group hands its partition back. Before, a revoke
    dropped them: in a group that rebalanced more often than the attempts took, the record was tried
    for good, never dead-lettered, and nothing after it in its partition was handled."""
    settings = load_settings(store_uri=file_store_uri(tmp_path), handler_max_attempts=3)
    stage = Stage("review", settings=settings)

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        raise RuntimeError("a bug this input sets off")

    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    [payload] = sku_ingested_payloads(stage.store, 1)
    poison = _record(tp.topic, 0, ingested_envelope(payload).model_dump_json().encode())
    consumer, producer = _wired(stage)
    listener = runtime._RebalanceListener(stage)
    for _ in range(3):
        stage._process_batch({tp: [poison]})
        listener.on_partitions_revoked([tp])  # a rebalance before its back-off ends
        listener.on_partitions_assigned([tp])  # and the partition comes back here

    assert consumer.committed == {tp: 1}
    [(topic, value)] = producer.acked
    letter = DeadLetter.model_validate_json(value)
    assert (topic, letter.reason) == (tp.topic + DLQ_SUFFIX, "handler_error")
    assert "after 3 attempts" in letter.detail


def test_a_consumer_whose_close_fails_at_the_stop_still_lets_the_producer_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving the group can fail as the stage stops (the broker going away at the same time). Before,
    the consumer's close raised past the producer's, which was never closed, and run() raised after a
    stop that had committed all it could; now the error is logged and the stop ends as any other."""
    settings = load_settings(store_uri=file_store_uri(tmp_path), group_lag_interval_s=0)
    stage = Stage("review", settings=settings)
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    consumer = _StoppingConsumer(stage, close_error=KafkaTimeoutError("leaving the group timed out"))
    producer = _Producer()
    monkeypatch.setattr(runtime, "make_consumer", lambda *args, **kwargs: consumer)
    monkeypatch.setattr(runtime, "make_producer", lambda *args, **kwargs: producer)

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"):
        assert stage.run(install_signal_handlers=False, serve_health=False) == 0

    assert producer.closed
    assert any("leaving the group timed out" in record.getMessage() for record in caplog.records)
