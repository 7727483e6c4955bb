"""Dead letters that wait (their DLQ topic refuses them even with their original in the store): what
``skuforge_dlq_letters_waiting`` says, and how long a letter is said to have waited.

Before: past ``ATTEMPTS_KEPT`` waiting letters the oldest was forgotten while its partition still
waited, so the gauge undercounted (and the letter was counted and logged again at its next retry); a
letter whose input a retry then handled stayed counted until its partition moved, paging for nothing;
and a partition that moved away and back started its letter's ``dead_letter_waiting_s`` again from 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import MessageSizeTooLargeError
from kafka.structs import TopicPartition

from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import DLQ_SUFFIX, PASSTHROUGH_OUT, SKU_INGESTED
from shared import runtime
from shared.config import load_settings
from shared.runtime import Context, Emit, Stage
from tests.support.bus import file_store_uri, ingested_envelope, sku_ingested_payloads
from tests.support.runtime import _Consumer, _Producer


class _DlqRefusingProducer(_Producer):
    """Refuses every dead letter for good, as a DLQ topic whose max.message.bytes is below any letter
    does, while ``dlq_refuses``; acknowledges everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.dlq_refuses = True

    def flush(self, timeout: float | None = None) -> None:
        pending, self._pending = self._pending, []
        for topic, value, future in pending:
            if topic.endswith(DLQ_SUFFIX) and self.dlq_refuses:
                future.error = MessageSizeTooLargeError(f"{topic}: over max.message.bytes")
            else:
                future.error = None
                self.acked.append((topic, value))


def _stage(tmp_path: Path, **settings: object) -> tuple[Stage, _Consumer, _DlqRefusingProducer]:
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path), **settings))
    consumer, producer = _Consumer(), _DlqRefusingProducer()
    stage._consumer = consumer
    stage._producer = producer
    return stage, consumer, producer


def _raw(tp: TopicPartition, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(
        tp.topic, tp.partition, -1, offset, 0, 0, b"raw", value, [], None, 3, len(value), -1
    )


def _waiting(stage: Stage) -> float | None:
    dlq = stage.settings.topic_name(SKU_INGESTED) + DLQ_SUFFIX
    return stage.metrics.registry.get_sample_value(
        "skuforge_dlq_letters_waiting", {"stage": stage.name, "topic": dlq}
    )


def _refused_waiting(stage: Stage) -> float:
    dlq = stage.settings.topic_name(SKU_INGESTED) + DLQ_SUFFIX
    labels = {"stage": stage.name, "topic": dlq, "outcome": "waiting"}
    return stage.metrics.registry.get_sample_value("skuforge_dlq_refused_total", labels) or 0.0


def test_letters_waiting_past_attempts_kept_are_all_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each waiting letter holds its partition: two partitions, two letters waiting, whatever
    ATTEMPTS_KEPT. Before, past it the oldest was forgotten (the gauge said 1), and at its partition's
    next retry counted and logged again as a new refusal, forgetting the other."""
    monkeypatch.setattr(runtime, "ATTEMPTS_KEPT", 1)
    stage, consumer, _ = _stage(tmp_path)
    stage.handler(SKU_INGESTED)(lambda event, ctx: list[Emit]())
    topic = stage.settings.topic_name(SKU_INGESTED)
    partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    batch = {tp: [_raw(tp, 0, b"not json")] for tp in partitions}

    stage._process_batch(batch)
    assert _waiting(stage) == 2
    stage._process_batch(batch)  # both partitions' retries
    assert (_waiting(stage), _refused_waiting(stage)) == (2, 2)
    assert not consumer.committed


def test_a_letter_whose_input_a_retry_handles_no_longer_waits(tmp_path: Path) -> None:
    """The handler failed its last attempt and the DLQ refused the letter; at the partition's retry the
    handler succeeds and the output goes. Before, the letter was still counted as waiting (and
    SkuforgeDeadLetterWaiting paged) until the partition moved to another member."""
    stage, consumer, producer = _stage(tmp_path, handler_max_attempts=1)
    failing = [True]

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        if failing[0]:
            raise RuntimeError("a fault that passes")
        return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]

    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    [payload] = sku_ingested_payloads(stage.store, 1)
    record = _raw(tp, 0, ingested_envelope(payload).model_dump_json().encode())._replace(
        key=payload.sku.sku_id.encode()
    )

    stage._process_batch({tp: [record]})
    assert _waiting(stage) == 1
    failing[0] = False
    stage._process_batch({tp: [record]})  # the partition's retry

    assert consumer.committed == {tp: 1}
    assert [topic for topic, _ in producer.acked] == [stage.settings.topic_name(PASSTHROUGH_OUT)]
    assert _waiting(stage) == 0


def test_a_waiting_letter_whose_partition_moves_away_and_back_waits_since_it_first_did(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The partition's back-off line says how long its letter has waited (dead_letter_waiting_s). Before,
    a partition revoked and handed back started it again from 0, and counted and logged the letter's
    refusal again; now the same letter (same place, same key and value) keeps its first refusal."""
    stage, consumer, producer = _stage(tmp_path)
    stage.handler(SKU_INGESTED)(lambda event, ctx: list[Emit]())
    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    poison = _raw(tp, 0, b"not json")
    listener = runtime._RebalanceListener(stage)

    stage._process_batch({tp: [poison]})
    assert (_waiting(stage), _refused_waiting(stage)) == (1, 1)
    [letter] = stage._waiting_letters.values()
    letter.since -= 600  # as if it had waited ten minutes
    listener.on_partitions_revoked([tp])
    assert _waiting(stage) == 0  # its next holder counts it
    listener.on_partitions_assigned([tp])  # the group hands it back
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="skuforge.runtime"):
        stage._process_batch({tp: [poison]})

    [paused] = [r for r in caplog.records if r.getMessage() == "transient fault; partition paused"]
    assert paused.__dict__["dead_letter_waiting_s"] >= 600
    assert (_waiting(stage), _refused_waiting(stage)) == (1, 1)
    producer.dlq_refuses = False  # the DLQ topic's limit raised
    stage._process_batch({tp: [poison]})
    assert consumer.committed == {tp: 1}
    assert _waiting(stage) == 0
