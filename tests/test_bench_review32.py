"""The benches' input step (bench/events.py), on the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from bench.replicas import count_records
from schemas.topics import SKU_INGESTED
from shared.store import open_store
from tests.support.bus import file_store_uri, isolated_settings, produce, sku_ingested_payloads
from tests.support.kafka import session_admin

pytestmark = pytest.mark.kafka


def test_input_the_broker_refuses_fails_the_step_instead_of_counting_as_produced(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # kafka-python's flush() does not raise for a record the broker refused (here: over the topic's
    # max.message.bytes): produce() returned its event id, and the bench's round then waited for input
    # that was never there; a test producing with it waited for an output that could not come.
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"), flush_timeout_s=5.0)
    name = settings.topic_name(SKU_INGESTED)
    admin = session_admin(kafka_bootstrap)
    admin.create_topics([NewTopic(name, 1, 1, topic_configs={"max.message.bytes": "300"})])
    admin.wait_for_topics([name], timeout_ms=30_000)
    payloads = sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 1)
    with pytest.raises(KafkaError, match=f"1 of 1 records to {name} were not delivered.*MessageSizeTooLarge"):
        produce(settings, SKU_INGESTED, payloads)
    assert count_records(settings, [name]) == 0
