"""A DLQ topic that refuses a dead letter for good, on the real broker: the letter's own Kafka key.

A dead letter keeps its input's Kafka key (up to 256 KiB), and the small letter sent again with its
original in the object store (``_send_letter_small``) kept it too: a DLQ topic whose ``max.message.bytes``
sat below the key alone refused that letter as well, and the input's partition waited for good, storing
the original again and logging an error at every retry. Now the small letter carries the key's digest
(the letter's ``original_key_ref`` has the key), a refusal is logged once per letter, and
``skuforge_dlq_refused_total`` counts each letter refused.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from schemas.envelope import DeadLetter, Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared.dlq import original_record
from shared.runtime import Stage
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    running,
    sku_ingested_payloads,
)
from tests.support.kafka import session_admin
from tests.support.polling import wait_for

pytestmark = pytest.mark.kafka

# Above a letter without its original (about 1 kB), below the key alone.
DLQ_LIMIT = "4000"
BIG_KEY = b"K" * 8000
# Below any letter.
TOO_SMALL = "300"
BROKER_DEFAULT = "1048588"


def _limit(bootstrap: str, topic_name: str, max_message_bytes: str) -> None:
    session_admin(bootstrap).alter_configs(
        [
            ConfigResource(
                ConfigResourceType.TOPIC, topic_name, configs={"max.message.bytes": max_message_bytes}
            )
        ]
    )


def _send_not_json(bootstrap: str, topic_name: str, key: bytes, value: bytes) -> None:
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        raw.send(topic_name, key=key, value=value).get(timeout=30)
    finally:
        raw.close()


def _refused(stage: Stage, dlq: str, outcome: str) -> float:
    value = stage.metrics.registry.get_sample_value(
        "skuforge_dlq_refused_total", {"stage": stage.name, "topic": dlq, "outcome": outcome}
    )
    return value or 0.0


def _retries(stage: Stage, topic_name: str) -> float:
    value = stage.metrics.registry.get_sample_value(
        "skuforge_messages_total", {"stage": stage.name, "topic": topic_name, "outcome": "retry"}
    )
    return value or 0.0


def _store_writes(stage: Stage) -> float:
    value = stage.metrics.registry.get_sample_value(
        "skuforge_store_write_seconds_count", {"stage": stage.name}
    )
    return value or 0.0


def test_a_letter_whose_key_alone_is_over_the_dlq_limit_goes_keyed_by_its_digest_and_the_partition_moves(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    dlq = settings.dlq_name(SKU_INGESTED)
    _limit(kafka_bootstrap, dlq, DLQ_LIMIT)
    stage = build_stage(settings=settings)
    _send_not_json(kafka_bootstrap, settings.topic_name(SKU_INGESTED), BIG_KEY, b"not json")
    [good] = sku_ingested_payloads(stage.store, 1)
    produce(settings, SKU_INGESTED, [good])

    with running(stage):
        letters = read_topic(kafka_bootstrap, dlq, expect=1, timeout_s=30)
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=30)
    assert [Envelope[SkuIngested].model_validate_json(r.value).sku_id for r in outputs] == [good.sku.sku_id]
    [record] = letters
    assert record.key == hashlib.sha256(BIG_KEY).hexdigest().encode()
    letter = DeadLetter.model_validate_json(record.value)
    assert (letter.reason, letter.original_offset) == ("not_json", 0)
    # Nothing is lost: the key is in the store, and a replay reads it back whole.
    assert letter.original_key_b64 is None and letter.original_key_ref is not None
    assert original_record(letter, stage.store) == (BIG_KEY, b"not json")
    assert _refused(stage, dlq, "sent_small") == 1
    assert _refused(stage, dlq, "waiting") == 0


def test_a_letter_the_dlq_refuses_even_small_is_logged_stored_and_counted_once_while_it_waits(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Below even a letter without its original, the partition waits and retries; before, each retry
    stored the original again and logged the refusal again, and no metric said so."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    dlq = settings.dlq_name(SKU_INGESTED)
    _limit(kafka_bootstrap, dlq, TOO_SMALL)
    stage = build_stage(settings=settings)
    _send_not_json(kafka_bootstrap, settings.topic_name(SKU_INGESTED), b"SKU-BAD", b"x" * 6000)

    def refusals_logged() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.ERROR and "refuses a dead letter for good" in r.getMessage()
        ]

    topic = settings.topic_name(SKU_INGESTED)
    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"), running(stage):
        wait_for("the refusal counted", lambda: _refused(stage, dlq, "waiting"), timeout_s=60)
        written, retried = _store_writes(stage), _retries(stage, topic)
        wait_for("three retries more", lambda: _retries(stage, topic) >= retried + 3, timeout_s=60)
        assert len(refusals_logged()) == 1
        assert _refused(stage, dlq, "waiting") == 1
        assert _store_writes(stage) == written  # the original was stored once, not at each retry
        _limit(kafka_bootstrap, dlq, BROKER_DEFAULT)
        # Behind the letter now, the good input's handler (its store writes) runs only once it has gone.
        [good] = sku_ingested_payloads(stage.store, 1)
        produce(settings, SKU_INGESTED, [good])
        letters = read_topic(kafka_bootstrap, dlq, expect=1, timeout_s=60)
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=60)
    assert [DeadLetter.model_validate_json(r.value).reason for r in letters] == ["not_json"]
    assert [Envelope[SkuIngested].model_validate_json(r.value).sku_id for r in outputs] == [good.sku.sku_id]
    assert len(refusals_logged()) == 1
    # Once the limit is raised the letter fits whole, its original inline.
    assert (_refused(stage, dlq, "waiting"), _refused(stage, dlq, "sent_small")) == (1, 0)
    assert DeadLetter.model_validate_json(letters[0].value).original_value_b64


def _waiting(stage: Stage, dlq: str) -> float | None:
    return stage.metrics.registry.get_sample_value(
        "skuforge_dlq_letters_waiting", {"stage": stage.name, "topic": dlq}
    )


def test_a_large_original_whose_letter_waits_is_stored_once_and_its_retries_logged_once(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An original over 256 KiB is stored by the letter itself (_dead_letter), and the letter is made
    again at each retry while it waits: each stored the original again, and logged "dead-lettered", the
    producer "stopped for good" (each retry's new producer) and "transient fault; partition paused"
    again, every few seconds for good. Now each is logged once per waiting letter (then at most every
    10 minutes), the original stored once, and skuforge_dlq_letters_waiting says it waits."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    dlq = settings.dlq_name(SKU_INGESTED)
    _limit(kafka_bootstrap, dlq, TOO_SMALL)
    stage = build_stage(settings=settings)
    topic = settings.topic_name(SKU_INGESTED)
    _send_not_json(kafka_bootstrap, topic, b"SKU-BAD", b"x" * 300_000)

    def logged(text: str) -> int:
        return sum(1 for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage())

    lines = ("dead-lettered", "stopped for good", "transient fault; partition paused")
    with caplog.at_level(logging.WARNING), running(stage):
        wait_for("the refusal counted", lambda: _refused(stage, dlq, "waiting"), timeout_s=60)
        retried = _retries(stage, topic)
        wait_for("the first retry logged", lambda: _retries(stage, topic) >= retried + 1, timeout_s=60)
        written, retried = _store_writes(stage), _retries(stage, topic)
        first = {line: logged(line) for line in lines}
        wait_for("three retries more", lambda: _retries(stage, topic) >= retried + 3, timeout_s=60)
        assert _store_writes(stage) == written  # before, the original was stored again at each retry
        assert {line: logged(line) for line in lines} == first
        assert all(first.values()), first  # each was logged once
        assert _waiting(stage, dlq) == 1
        _limit(kafka_bootstrap, dlq, BROKER_DEFAULT)
        letters = read_topic(kafka_bootstrap, dlq, expect=1, timeout_s=60)
        wait_for("the letter no longer waits", lambda: _waiting(stage, dlq) == 0, timeout_s=30)
    assert [DeadLetter.model_validate_json(r.value).reason for r in letters] == ["not_json"]
    letter = DeadLetter.model_validate_json(letters[0].value)
    assert original_record(letter, stage.store) == (b"SKU-BAD", b"x" * 300_000)
