"""The runtime on the real broker: a record's Kafka key against the SKU its envelope names."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import KafkaProducer
from kafka.structs import TopicPartition

from schemas.envelope import DeadLetter, Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared import runtime
from shared.config import load_settings
from shared.runtime import Context, Emit, Stage
from tests.support.bus import (
    create_topics,
    file_store_uri,
    ingested_envelope,
    isolated_settings,
    read_topic,
    running,
    sku_ingested_payloads,
    wait_for,
)
from tests.support.runtime import _record, _wired


@pytest.mark.kafka
def test_a_record_keyed_by_another_sku_is_dead_lettered_and_one_with_no_key_is_handled(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The key decides the partition, so the member, that handles a SKU. Before, the key was never
    read: an event keyed by another SKU was handled on that SKU's partition, beside (and racing) its own
    SKU's events on another member, and nothing said so."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    store = build_stage(settings=settings).store
    rightly, wrongly, keyless = (ingested_envelope(p) for p in sku_ingested_payloads(store, 3))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    topic = settings.topic_name(SKU_INGESTED)
    producer.send(topic, key=rightly.sku_id.encode(), value=rightly.model_dump_json().encode())
    producer.send(topic, key=b"SKU-OTHER", value=wrongly.model_dump_json().encode())
    producer.send(topic, key=None, value=keyless.model_dump_json().encode(), partition=0)
    producer.flush()
    producer.close()

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"), running(build_stage(settings=settings)):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=2, timeout_s=60)
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=60)

    assert sorted(json.loads(r.value)["sku_id"] for r in outputs) == sorted([rightly.sku_id, keyless.sku_id])
    [record] = letters
    letter = DeadLetter.model_validate_json(record.value)
    assert letter.reason == "key_mismatch"
    assert letter.detail.startswith(f"Kafka key 'SKU-OTHER' is not the envelope's sku_id {wrongly.sku_id!r};")
    assert (letter.event_id, letter.sku_id, letter.original_offset) == (wrongly.event_id, wrongly.sku_id, 1)
    assert base64.b64decode(letter.original_key_b64 or "") == b"SKU-OTHER"
    assert record.key == b"SKU-OTHER"  # the letter keeps the original's key, as every letter does
    # The keyless one is handled, and the log says whose order it may not keep.
    [warning] = [r for r in caplog.records if r.getMessage().startswith("records with no Kafka key")]
    assert (warning.__dict__["topic"], warning.__dict__["offset"]) == (topic, 2)


@pytest.mark.parametrize("batched", [False, True], ids=["handler", "batch_handler"])
def test_an_empty_kafka_key_is_a_key_naming_no_sku_and_is_dead_lettered(
    tmp_path: Path, batched: bool
) -> None:
    """An empty key is a key (every record so keyed lands on one partition), not an absent one: it names
    no SKU, so it is refused as another SKU's key is, by both kinds of handler."""
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path)))
    handled: list[str] = []
    if batched:

        @stage.batch_handler(SKU_INGESTED)
        def handle_batch(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[list[Emit]]:
            handled.extend(event.sku_id for event in events)
            return [[] for _ in events]
    else:

        @stage.handler(SKU_INGESTED)
        def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
            handled.append(event.sku_id)
            return []

    consumer, producer = _wired(stage)
    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    envelopes = [ingested_envelope(p) for p in sku_ingested_payloads(stage.store, 2)]
    records = [_record(tp.topic, offset, e.model_dump_json().encode()) for offset, e in enumerate(envelopes)]
    records[0] = records[0]._replace(key=b"", serialized_key_size=0)
    stage._process_batch({tp: records})

    assert handled == [envelopes[1].sku_id]
    [(dlq, value)] = producer.acked
    letter = DeadLetter.model_validate_json(value)
    assert (dlq, letter.reason, letter.sku_id) == (tp.topic + ".dlq", "key_mismatch", envelopes[0].sku_id)
    assert letter.detail.startswith(f"Kafka key '' is not the envelope's sku_id {envelopes[0].sku_id!r};")
    assert consumer.committed == {tp: 2}


@pytest.mark.kafka
def test_records_with_no_key_are_warned_of_once_and_counted_each(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A foreign producer that never keys its events sent one warning per record, thousands a minute,
    and nothing a user could alert on. Now the log says it once a minute per topic (with how many were
    seen since) and skuforge_unkeyed_messages_total counts every one."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    store = build_stage(settings=settings).store
    keyless = [ingested_envelope(p) for p in sku_ingested_payloads(store, 5)]
    keyed = ingested_envelope(sku_ingested_payloads(store, 1, prefix="KEYED")[0])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    topic = settings.topic_name(SKU_INGESTED)
    for envelope in keyless:
        producer.send(topic, key=None, value=envelope.model_dump_json().encode(), partition=0)
    producer.send(topic, key=keyed.sku_id.encode(), value=keyed.model_dump_json().encode())
    producer.flush()
    producer.close()

    stage = build_stage(settings=settings)
    unkeyed = "skuforge_unkeyed_messages_total"
    labels = {"stage": stage.name, "topic": topic}
    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"), running(stage):
        read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=6, timeout_s=60)
        wait_for("the inputs' commit", lambda: stage.metrics.registry.get_sample_value(unkeyed, labels) == 5)

    [warning] = [r for r in caplog.records if r.getMessage().startswith("records with no Kafka key")]
    assert (warning.__dict__["topic"], warning.__dict__["offset"]) == (topic, 0)
    assert warning.__dict__["unkeyed_since_last_warning"] == 1


def test_a_minute_later_the_warning_says_how_many_records_with_no_key_came_since(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning is rate-limited, not dropped: the next one, a minute on, counts those it kept quiet."""
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path)))
    stage.handler(SKU_INGESTED)(lambda event, ctx: list[Emit]())
    _wired(stage)
    clock = [1000.0]
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    envelopes = [ingested_envelope(p) for p in sku_ingested_payloads(stage.store, 6)]
    records = [
        _record(tp.topic, offset, e.model_dump_json().encode())._replace(key=None, serialized_key_size=-1)
        for offset, e in enumerate(envelopes)
    ]
    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"):
        stage._process_batch({tp: records[:3]})
        clock[0] += 30
        stage._process_batch({tp: records[3:5]})
        clock[0] += 31
        stage._process_batch({tp: records[5:]})

    warnings = [r for r in caplog.records if r.getMessage().startswith("records with no Kafka key")]
    said = [(w.__dict__["offset"], w.__dict__["unkeyed_since_last_warning"]) for w in warnings]
    assert said == [(0, 1), (5, 5)]
    unkeyed = stage.metrics.registry.get_sample_value(
        "skuforge_unkeyed_messages_total", {"stage": "review", "topic": tp.topic}
    )
    assert unkeyed == 6
