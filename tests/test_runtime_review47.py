"""The stage runtime on the real broker, reviewed again: which client is which."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared.config import load_settings
from shared.runtime import KafkaUnreachable
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

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: every connection is refused (ECONNREFUSED)


@pytest.mark.kafka
def test_a_stages_consumer_and_producer_have_client_ids_of_their_own(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Both were ``client_id=<stage>``: the broker's per-client quotas and metrics, its request logs and
    `kafka-consumer-groups.sh --describe` could not tell the stage's reads from its writes. The consumer
    is now ``<stage>-consumer``, the producer ``<stage>-producer``."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    stage = build_stage(settings=settings)
    produce(settings, SKU_INGESTED, sku_ingested_payloads(stage.store, 1))
    with running(stage):
        read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1)
        group = f"{settings.consumer_group_prefix}.{stage.name}"
        members = session_admin(kafka_bootstrap).describe_groups([group])[group]["members"]
        assert [member["client_id"] for member in members] == [f"{stage.name}-consumer"]
        assert stage._producer is not None
        assert stage._producer.config["client_id"] == f"{stage.name}-producer"


def test_a_stage_that_finds_no_broker_names_its_clients_last_connection_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal's cause is looked up by the id of the client that gave up (the consumer, first): by
    the stage's bare name, no client's, it would say only "Unable to bootstrap"."""
    # 5 s, not 1 s: the refusal names "connection refused" only if a refused connection was logged
    # before the deadline, and a loaded machine stalled a client's first attempt past 1 s.
    for client in (KafkaProducer, KafkaAdminClient, KafkaConsumer):
        monkeypatch.setitem(client.DEFAULT_CONFIG, "bootstrap_timeout_ms", 5_000)
    stage = build_stage(settings=load_settings(kafka_bootstrap=CLOSED, store_uri=file_store_uri(tmp_path)))
    with pytest.raises(
        KafkaUnreachable, match=r"cannot reach Kafka at 127\.0\.0\.1:1 \(connection refused; "
    ):
        stage.run(install_signal_handlers=False)
