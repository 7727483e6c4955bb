"""A producer that kafka-python stopped for good is replaced, on the real broker.

The idempotent producer turns a batch refused for good (here: a record over the topic's
``max.message.bytes``; in a deployment also a topic ACL) into a fatal state in which every later send
fails, to any topic. The stage, the console's relay and the LoRA trainer kept that producer, so they
failed every batch until restarted, long after the operator fixed the cause.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from schemas.envelope import DeadLetter, Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared.bus import Publisher
from shared.config import Settings
from shared.errors import TransientError
from shared.store import open_store
from skuforge_cli.dlq import main as dlq_main
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

pytestmark = pytest.mark.kafka

# Far below one envelope (about 700 bytes): every record to the topic is refused.
TOO_SMALL = "300"
BROKER_DEFAULT = "1048588"
# Above one small envelope, below one with 40 photos (about 10 kB).
FITS_ONE_SMALL_EVENT = "3000"


def _limit(bootstrap: str, topic_name: str, max_message_bytes: str, *, create: bool = False) -> None:
    admin = session_admin(bootstrap)
    configs = {"max.message.bytes": max_message_bytes}
    if create:
        admin.create_topics([NewTopic(topic_name, 1, 1, topic_configs=configs)])
        admin.wait_for_topics([topic_name], timeout_ms=30_000)
    else:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name, configs=configs)])


def _settings(bootstrap: str, tmp_path: Path) -> Settings:
    return isolated_settings(bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)


def test_the_publisher_sends_again_once_the_refusal_is_lifted(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = _settings(kafka_bootstrap, tmp_path)
    create_topics(settings, SKU_INGESTED, partitions=1)
    limited = settings.topic_name(PASSTHROUGH_OUT)
    _limit(kafka_bootstrap, limited, TOO_SMALL, create=True)
    payload = sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 1)[0]
    publisher = Publisher(settings, "review")
    try:
        with pytest.raises(TransientError, match="MessageSizeTooLarge"):
            publisher.publish(PASSTHROUGH_OUT, payload, sku_id=payload.sku.sku_id)
        # Another topic, which takes the record: the stopped producer failed this one too.
        publisher.publish(SKU_INGESTED, payload, sku_id=payload.sku.sku_id)
        _limit(kafka_bootstrap, limited, BROKER_DEFAULT)
        _publish_once_taken(settings, payload)
    finally:
        publisher.close()
    assert len(read_topic(kafka_bootstrap, limited, expect=1, timeout_s=30)) == 1


def test_a_stage_dead_letters_an_input_whose_output_the_topic_refuses_and_delivers_the_rest(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """An output over its topic's ``max.message.bytes`` is refused for good: before, the partition backed
    off at the retry cap for ever, and nothing after the input moved. Now the input is dead-lettered,
    naming the topic and the broker's error, and the inputs after it are delivered (by a new producer:
    the refusal stopped the first)."""
    settings = _settings(kafka_bootstrap, tmp_path)
    create_topics(settings, SKU_INGESTED, partitions=1)
    limited = settings.topic_name(PASSTHROUGH_OUT)
    _limit(kafka_bootstrap, limited, FITS_ONE_SMALL_EVENT, create=True)
    stage = build_stage(settings=settings)
    small = sku_ingested_payloads(stage.store, 3)
    photo = small[0].photos[0]
    many_photos = [photo.model_copy(update={"photo_id": f"p{index}"}) for index in range(40)]
    large = small[1].model_copy(update={"photos": many_photos})
    input_ids = produce(settings, SKU_INGESTED, [small[0], large, small[2]])
    with running(stage):
        outputs = read_topic(kafka_bootstrap, limited, expect=2, timeout_s=60)
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=30)
        assert sorted(Envelope[SkuIngested].model_validate_json(r.value).sku_id for r in outputs) == [
            "SKU-00000",
            "SKU-00002",
        ]
        [letter] = [DeadLetter.model_validate_json(record.value) for record in letters]
        assert (letter.reason, letter.event_id) == ("output_refused", input_ids[1])
        assert limited in letter.detail and "MessageSizeTooLargeError" in letter.detail
        assert (letter.sku_id, letter.original_offset) == ("SKU-00001", 1)

        # Nothing accepted is lost: the limit raised, a replay (without --reason: a fix outside the event
        # helps this letter) delivers the input's output.
        _limit(kafka_bootstrap, limited, BROKER_DEFAULT)
        probe = large.model_copy(update={"sku": large.sku.model_copy(update={"sku_id": "PROBE-00001"})})
        _publish_once_taken(settings, probe)
        replayed = dlq_main(
            ["replay", settings.topic_name(SKU_INGESTED)], settings=settings, store=stage.store
        )
        assert replayed == 0
        outputs = read_topic(kafka_bootstrap, limited, expect=4, timeout_s=60)
    assert sorted(Envelope[SkuIngested].model_validate_json(r.value).sku_id for r in outputs) == [
        "PROBE-00001",
        "SKU-00000",
        "SKU-00001",
        "SKU-00002",
    ]


def _publish_once_taken(settings: Settings, payload: SkuIngested) -> None:
    """Publish ``payload`` to the output topic, again until its raised limit takes it."""
    publisher = Publisher(settings, "probe")
    try:
        deadline = time.monotonic() + 20
        while True:  # the broker applies a changed topic config within moments
            try:
                publisher.publish(PASSTHROUGH_OUT, payload, sku_id=payload.sku.sku_id)
                return
            except TransientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        publisher.close()
