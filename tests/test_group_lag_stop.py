"""A stop while a lag read is under way (the broker away: up to the admin client's 10 s request
timeout) returns at once: before, it waited for the read, 10 s more of `skuforge up`'s 20 s grace. The
thread is a daemon and closes its own admin client once the read ends."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from shared.group_lag import GroupLagWatcher
from shared.observability import StageMetrics

# Longer than any stop that does not wait (a few milliseconds), shorter than the 10 s a stop waited.
READ_HELD_S = 5.0


class _HeldRead(GroupLagWatcher):
    """A watcher whose reads block until ``stopped`` is set (or ``READ_HELD_S`` passed), as a read of
    a broker that does not answer does; ``stopped_during_read`` says whether the stop came first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reading = threading.Event()
        self.stopped = threading.Event()
        self.stopped_during_read: bool | None = None

    def _read_topic_offsets(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        self.reading.set()
        self.stopped_during_read = self.stopped.wait(READ_HELD_S)
        raise KafkaTimeoutError("no broker answered")  # as the read of a broker away ends


def _held_read(metrics: StageMetrics) -> _HeldRead:
    """A watcher of group "g" on topic "t" whose reads are held, as a broker away holds them."""
    return _HeldRead(
        connection={"bootstrap_servers": "127.0.0.1:1"},
        groups={"g": {"t"}},
        gauge=metrics.group_lag,
        interval_s=0.01,
        read_failures=metrics.group_lag_read_failures,
    )


def test_a_stop_during_a_lag_read_returns_without_waiting_for_the_read() -> None:
    metrics = StageMetrics("upstream")
    watcher = _held_read(metrics)
    watcher.start()
    assert watcher.reading.wait(60)
    watcher.stop()
    watcher.stopped.set()
    watcher._thread.join(60)
    assert watcher.stopped_during_read is True


def test_a_read_failing_after_the_stop_is_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    """The read under way as the stage stops fails as the broker goes away with the stack: counted, it
    showed in ``skuforge_consumer_group_lag_read_failures_total`` (and a WARNING) of a process that goes
    on serving its metrics (the console), an alert on a lag read nobody wanted any more."""
    metrics = StageMetrics("upstream")
    watcher = _held_read(metrics)
    with caplog.at_level(logging.WARNING, logger="skuforge.group_lag"):
        watcher.start()
        assert watcher.reading.wait(60)
        watcher.stop()
        watcher.stopped.set()
        watcher._thread.join(60)
    assert not watcher._thread.is_alive()
    assert metrics.group_lag_read_failures.labels("g")._value.get() == 0
    assert not [r for r in caplog.records if r.name == "skuforge.group_lag"]
