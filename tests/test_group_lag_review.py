"""Group lag on the real broker after retention deleted records, and after a watched topic is deleted."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import GroupAuthorizationFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from devstack.broker import free_port
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


def _lag_watcher(
    connection: dict[str, Any], groups: dict[str, set[str]]
) -> tuple[StageMetrics, GroupLagWatcher]:
    """A watcher of ``groups``' lag through ``connection`` (read as the test calls ``read_once``), and
    the metrics it sets."""
    metrics = StageMetrics("upstream")
    watcher = GroupLagWatcher(
        connection,
        groups,
        metrics.group_lag,
        interval_s=60,
        read_failures=metrics.group_lag_read_failures,
    )
    return metrics, watcher


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

    _, watcher = _lag_watcher(
        {"bootstrap_servers": [kafka_bootstrap]}, {committed_group: {topic}, new_group: {topic}}
    )
    try:
        assert watcher.read_once() == {committed_group: {topic: 2}, new_group: {topic: 2}}
    finally:
        watcher.stop()


@pytest.mark.kafka
def test_a_committed_offset_past_the_end_of_a_recreated_topic_counts_its_records(
    kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    """A topic deleted and created again (offsets from 0) while its group was stopped: the group's
    committed offset lies past the new end, so its consumer starts over at the earliest record, but the
    lag read 0 (end minus committed, floored) until the new topic outgrew the old offset, and the lag
    alert stayed silent while the group was down."""
    topic = new_topic("lag-recreated")
    _produce(kafka_bootstrap, topic, 3)
    group = f"recreated-{topic}"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(500, "", -1)})  # of the topic before
    consumer.close()

    _, watcher = _lag_watcher({"bootstrap_servers": [kafka_bootstrap]}, {group: {topic}})
    try:
        assert watcher.read_once() == {group: {topic: 3}}
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
    metrics, watcher = _lag_watcher({"bootstrap_servers": [kafka_bootstrap]}, {group: {topic}})
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


@pytest.mark.kafka
def test_a_group_the_broker_refuses_leaves_the_others_read_and_is_counted(
    kafka_bootstrap: str,
    new_topic: NewTopic,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One group's error raised out of the whole read: no group's lag was updated, and the failure was
    logged only at DEBUG."""
    topic = new_topic("lag-refused")
    _produce(kafka_bootstrap, topic, 3)
    readable, refused = f"readable-{topic}", f"refused-{topic}"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=readable, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "", -1)})  # waits for the coordinator
    consumer.close()
    list_group_offsets = KafkaAdminClient.list_group_offsets

    def under_acls(admin: KafkaAdminClient, group_specs: dict[str, Any]) -> Any:
        # What a broker with ACLs answers for a group the stage's user may not describe.
        if refused in group_specs:
            raise GroupAuthorizationFailedError(refused)
        return list_group_offsets(admin, group_specs)

    monkeypatch.setattr(KafkaAdminClient, "list_group_offsets", under_acls)
    metrics, watcher = _lag_watcher(
        {"bootstrap_servers": [kafka_bootstrap]}, {readable: {topic}, refused: {topic}}
    )
    failures = "skuforge_consumer_group_lag_read_failures_total"
    try:
        with caplog.at_level(logging.DEBUG, logger="skuforge.group_lag"):
            assert watcher.read_once() == {readable: {topic: 2}}
            assert watcher.read_once() == {readable: {topic: 2}}
        assert metrics.registry.get_sample_value(LAG, {"group": readable, "topic": topic}) == 2
        assert metrics.registry.get_sample_value(LAG, {"group": refused, "topic": topic}) is None
    finally:
        watcher.stop()
    assert metrics.registry.get_sample_value(failures, {"group": refused}) == 2
    assert metrics.registry.get_sample_value(failures, {"group": readable}) == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "group", None) for r in warnings] == [refused]  # once, not at every read


@pytest.mark.kafka
def test_a_lag_that_can_no_longer_be_read_is_not_shown_as_fresh(
    kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    """The broker away: the last lag read stood for good, and dashboards and alerts took it as true."""
    topic = new_topic("lag-away")
    _produce(kafka_bootstrap, topic, 3)
    group = f"g-{topic}"
    connection: dict[str, Any] = {"bootstrap_servers": [kafka_bootstrap]}
    metrics, watcher = _lag_watcher(connection, {group: {topic}})
    try:
        watcher.read_once()
        assert metrics.registry.get_sample_value(LAG, {"group": group, "topic": topic}) == 3
        # Its admin client closed (stop() would drop the sample itself): the next read connects again,
        # to a broker now away.
        watcher._close_admin()
        connection["bootstrap_servers"] = [f"127.0.0.1:{free_port()}"]
        assert watcher.read_once() == {}
        assert metrics.registry.get_sample_value(LAG, {"group": group, "topic": topic}) is None
    finally:
        watcher.stop()
    failures = metrics.registry.get_sample_value(
        "skuforge_consumer_group_lag_read_failures_total", {"group": group}
    )
    assert failures == 1
