"""Group lag on the real broker after retention deleted records, and after a watched topic is deleted."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from shared.group_lag import GroupLagWatcher
from shared.observability import StageMetrics
from tests.support.kafka import NewTopic, session_admin

LAG = "skuforge_consumer_group_lag_messages"


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for _ in range(count):
        producer.send(topic, value=b"x", partition=0)
    producer.flush()
    producer.close()


@pytest.mark.kafka
def test_records_retention_deleted_are_not_lag(kafka_bootstrap: str, new_topic: NewTopic) -> None:
    """A group resumes at the earliest record still kept; counting from offset 0 (or from a committed
    offset retention has passed) reported lag that no consumer will ever read."""
    topic = new_topic("lag-retained")
    _produce(kafka_bootstrap, topic, 10)
    committed_group, new_group = f"committed-{topic}", f"new-{topic}"
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=committed_group, enable_auto_commit=False
    )
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1)})
    consumer.close()
    session_admin(kafka_bootstrap).delete_records({TopicPartition(topic, 0): 8})  # as retention would

    metrics = StageMetrics("upstream")
    watcher = GroupLagWatcher(
        {"bootstrap_servers": [kafka_bootstrap]},
        {committed_group: {topic}, new_group: {topic}},
        metrics.group_lag,
        interval_s=60,
    )
    try:
        assert watcher.read_once() == {committed_group: {topic: 2}, new_group: {topic: 2}}
    finally:
        watcher.stop()


@pytest.mark.kafka
def test_the_lag_of_a_deleted_topic_is_no_longer_reported(kafka_bootstrap: str) -> None:
    """The gauge kept the deleted topic's last lag for good, and the lag alert kept firing on it."""
    admin = session_admin(kafka_bootstrap)
    topic = f"lag-deleted-{uuid.uuid4().hex[:12]}"
    admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}}, timeout_ms=30_000)
    admin.wait_for_topics([topic], timeout_ms=30_000)
    _produce(kafka_bootstrap, topic, 3)
    group = f"g-{topic}"
    metrics = StageMetrics("upstream")
    watcher = GroupLagWatcher(
        {"bootstrap_servers": [kafka_bootstrap]}, {group: {topic}}, metrics.group_lag, interval_s=60
    )
    try:
        watcher.read_once()
        assert metrics.registry.get_sample_value(LAG, {"group": group, "topic": topic}) == 3
        admin.delete_topics([topic], timeout_ms=30_000)
        deadline = time.monotonic() + 30
        while topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert watcher.read_once() == {group: {}}
        assert metrics.registry.get_sample_value(LAG, {"group": group, "topic": topic}) is None
    finally:
        watcher.stop()
