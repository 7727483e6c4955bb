"""A consumer group's lag on the real broker: a group that committed and left, and a watcher of it."""

from __future__ import annotations

from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from shared.group_lag import GroupLagWatcher
from shared.observability import StageMetrics


def left_group(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """``group`` commits ``offset`` on ``topic``'s partition 0 and is left with no member, as when its
    stage is stopped."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)})
    consumer.close()


def lag_watcher(bootstrap: str, group: str, topic: str, metrics: StageMetrics) -> GroupLagWatcher:
    """A watcher of ``group``'s lag on ``topic`` into ``metrics``; its interval is a minute, so only
    the test's own ``read_once`` calls read."""
    return GroupLagWatcher(
        {"bootstrap_servers": [bootstrap]},
        {group: {topic}},
        metrics.group_lag,
        interval_s=60,
        read_failures=metrics.group_lag_read_failures,
    )
