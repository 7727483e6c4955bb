"""A DLQ topic that refuses a dead letter for good (its ``max.message.bytes`` below the letter's size), on
the real broker.

A letter carries its original inline up to 256 KiB (base64: up to ~350 kB), so a DLQ topic whose limit is
set below that refused it, and the input's partition backed off for ever: nothing after it moved until an
operator raised the limit. Now the letter is sent again once with its original kept in the object store
(``dlq-originals/``, as for an original over 256 KiB), so the letter itself is small.
"""

from __future__ import annotations

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

# Above a letter without its original (about 1 kB), below one carrying 6,000 bytes inline (8,000 base64).
DLQ_LIMIT = "4000"
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


def _send_not_json(bootstrap: str, topic_name: str, value: bytes) -> None:
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        raw.send(topic_name, key=b"SKU-BAD", value=value).get(timeout=30)
    finally:
        raw.close()


def test_a_letter_the_dlq_refuses_goes_again_with_its_original_in_the_store_and_the_partition_moves(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    dlq = settings.dlq_name(SKU_INGESTED)
    _limit(kafka_bootstrap, dlq, DLQ_LIMIT)
    stage = build_stage(settings=settings)
    not_json = b"x" * 6000
    _send_not_json(kafka_bootstrap, settings.topic_name(SKU_INGESTED), not_json)
    [good] = sku_ingested_payloads(stage.store, 1)
    produce(settings, SKU_INGESTED, [good])

    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=60)
        letters = read_topic(kafka_bootstrap, dlq, expect=1, timeout_s=30)
    assert [Envelope[SkuIngested].model_validate_json(r.value).sku_id for r in outputs] == [good.sku.sku_id]
    [letter] = [DeadLetter.model_validate_json(record.value) for record in letters]
    assert (letter.reason, letter.original_offset) == ("not_json", 0)
    assert letter.original_value_b64 == "" and letter.original_value_ref is not None
    assert "/dlq-originals/" in letter.original_value_ref.uri
    # Nothing is lost: a replay reads the original back whole.
    assert original_record(letter, stage.store) == (b"SKU-BAD", not_json)


def test_a_letter_the_dlq_refuses_even_small_names_the_limit_and_goes_once_it_is_raised(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Below even a letter without its original, nothing can take it: the partition waits (nothing is
    lost), the log names the DLQ topic and the limit to raise, and once it is raised the letter and the
    input after it go, with no restart."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    dlq = settings.dlq_name(SKU_INGESTED)
    _limit(kafka_bootstrap, dlq, TOO_SMALL)
    stage = build_stage(settings=settings)
    _send_not_json(kafka_bootstrap, settings.topic_name(SKU_INGESTED), b"x" * 6000)
    [good] = sku_ingested_payloads(stage.store, 1)
    produce(settings, SKU_INGESTED, [good])

    def refused_for_good() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.ERROR and "refuses a dead letter for good" in r.getMessage()
        ]

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"), running(stage):
        [message, *_] = wait_for("the refusal logged", refused_for_good, timeout_s=60)
        assert dlq in message and "max.message.bytes" in message
        _limit(kafka_bootstrap, dlq, BROKER_DEFAULT)
        letters = read_topic(kafka_bootstrap, dlq, expect=1, timeout_s=60)
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=60)
    assert [DeadLetter.model_validate_json(r.value).reason for r in letters] == ["not_json"]
    assert [Envelope[SkuIngested].model_validate_json(r.value).sku_id for r in outputs] == [good.sku.sku_id]
