"""Group-level consumer lag: what a consumer group has not committed yet, per topic, read from the broker.

The runtime's ``skuforge_consumer_lag_messages`` is per member and per partition it holds, and it
vanishes when the member stops: exactly when lag matters. This module reads the committed offsets
of whole groups with the admin API, so a stage reports the lag of its own group *and* of the groups
that consume what it produces (from ``schemas/flow.py``): when a stage is down, its upstream still
reports how far behind its group falls, and the lag alert can fire. Several stages may report the
same group; they read the same offsets, so dashboards and alerts take ``max by (group, topic)``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import OffsetSpec
from kafka.structs import TopicPartition
from prometheus_client import Counter, Gauge

from schemas.flow import CONSOLE, CONSOLE_INTAKE, PIPELINE, STAGES

log = logging.getLogger("skuforge.group_lag")

# The stages whose groups are watched: every consumer of the flow that runs on the runtime.
_CONSUMERS = (*PIPELINE, CONSOLE_INTAKE)
# What a stage's process publishes besides the stage's own outputs: `serve console` serves its intake's
# /metrics and relays the console's decisions (correction.resolved) from the same process.
_ALSO_PUBLISHED = {CONSOLE_INTAKE.name: CONSOLE.produces}
# A group that keeps failing is logged at WARNING once per this many seconds, at DEBUG in between.
WARN_EVERY_S = 300.0


def watched_groups(
    stage: str, own_topics: list[str], group_of: Callable[[str], str], topic_name: Callable[..., str]
) -> dict[str, set[str]]:
    """Group → topics whose lag ``stage`` reports: its own group on what it consumes, and each flow
    consumer's group on the topics ``stage`` produces."""
    watched: dict[str, set[str]] = {group_of(stage): set(own_topics)}
    service = STAGES.get(stage)
    if service is None:
        return watched
    produced = {topic_name(topic) for topic in (*service.produces, *_ALSO_PUBLISHED.get(stage, ()))}
    for consumer in _CONSUMERS:
        topics = {topic_name(topic) for topic in consumer.consumes} & produced
        if topics:
            watched.setdefault(group_of(consumer.name), set()).update(topics)
    return watched


def lag_by_topic(
    committed: Mapping[TopicPartition, int | None],
    ends: Mapping[TopicPartition, int],
    starts: Mapping[TopicPartition, int] | None = None,
) -> dict[str, int]:
    """Sum over each topic's partitions of end offset minus committed offset.

    A partition the group never committed counts from its earliest offset (stages start there), and
    so does one whose committed offset retention has since deleted: the group resumes at the earliest
    record still kept, so deleted records are not lag. So does one whose committed offset lies past its
    end (the topic deleted and created again): the consumer finds it out of range and starts over at the
    earliest record. ``starts`` missing a partition means offset 0. ``ends`` must be read after
    ``committed``, or a group that commits meanwhile reads as out of range.
    """
    starts = starts or {}
    lag: dict[str, int] = {}
    for tp, end in ends.items():
        offset = committed.get(tp) or 0
        done = max(offset if offset <= end else 0, starts.get(tp, 0))
        lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - done)
    return lag


class GroupLagWatcher:
    """Reads the groups' lag every ``interval_s`` in a thread of its own and sets ``gauge``.

    A group whose lag cannot be read (the broker away or timing out, the group refused under ACLs)
    counts in ``read_failures`` and loses its samples until a read succeeds: a last value left standing
    reads as a true lag on dashboards and in the alerts. The groups that did read are updated. A read
    that ends after ``stop`` (the broker going away with the stack) counts nothing.
    """

    def __init__(
        self,
        connection: Mapping[str, Any],
        groups: Mapping[str, set[str]],
        gauge: Gauge,
        interval_s: float,
        *,
        read_failures: Counter,
    ) -> None:
        """``connection``: the Kafka client options (``shared.bus.kafka_connection``)."""
        self.connection, self.groups, self.gauge, self.interval_s = connection, groups, gauge, interval_s
        self.read_failures = read_failures
        for group in groups:  # at 0 from the start, so increase() sees the first failure
            read_failures.labels(group)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="group-lag", daemon=True)
        self._admin: KafkaAdminClient | None = None
        self._reported: set[tuple[str, str]] = set()  # (group, topic) samples set by the last read
        self._warned_at: dict[str, float] = {}  # group → monotonic time of its last WARNING

    def start(self) -> GroupLagWatcher:
        """Start reading in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading, close the admin client and drop the samples it set: a process that goes on
        serving the gauge (the console, which runs its intake again after a fault) showed the last lag
        read as a fresh one while nothing read it. A read under way is not waited for: with the broker
        away it took up to 10 s more of a stage's stop (`skuforge up` allows 20 s). The thread is a
        daemon; once that read ends it closes its own client and drops what the read set."""
        self._stop.set()
        if not self._thread.is_alive():
            self._close_admin()
        self._drop_samples()

    def _drop_samples(self) -> None:
        for group, topic in self._reported:
            with contextlib.suppress(KeyError):
                self.gauge.remove(group, topic)
        self._reported = set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.read_once()
        self._close_admin()
        self._drop_samples()  # what a read under way at stop() set

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def read_once(self) -> dict[str, dict[str, int]]:
        """Read every watched group's lag now, set the gauge, return group → topic → lag for the groups
        read; a failure is counted and logged, never raised (lag is best effort, the stage goes on)."""
        result: dict[str, dict[str, int]] = {}
        try:
            ends, starts = self._read_topic_offsets()
        except Exception as exc:  # the broker may be away: no group can be read
            self._close_admin()
            for group in self.groups:
                self._failed(group, exc)
        else:
            for group, wanted in self.groups.items():
                try:
                    # One request per group: the admin client raises for all of them on one group's error.
                    committed = self._admin_client().list_group_offsets({group: None}).get(group, {})
                    offsets = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
                    group_ends = {tp: end for tp, end in ends.items() if tp.topic in wanted}
                    # The ends were read before the group's offsets: one it committed past them since
                    # is read against its partition's end now, not taken for one out of range.
                    ahead = [tp for tp, end in group_ends.items() if offsets.get(tp, 0) > end]
                    if ahead:
                        group_ends |= self._read_offsets(ahead, OffsetSpec.LATEST)
                except Exception as exc:
                    self._failed(group, exc)
                    continue
                lag = lag_by_topic(offsets, group_ends, starts)
                result[group] = lag
                self._warned_at.pop(group, None)
        reported: set[tuple[str, str]] = set()
        for group, lag in result.items():
            for topic, messages in lag.items():
                self.gauge.labels(group, topic).set(messages)
                reported.add((group, topic))
        # A topic that is gone (deleted, not yet recreated) has no lag to report, nor has a group not read
        # this time: drop its sample rather than leave the last value standing, which the lag alert would
        # read as a group stuck behind.
        for group, topic in self._reported - reported:
            with contextlib.suppress(KeyError):
                self.gauge.remove(group, topic)
        self._reported = reported
        return result

    def _admin_client(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = KafkaAdminClient(
                **self.connection,
                client_id="skuforge-group-lag",
                request_timeout_ms=10_000,
            )
        return self._admin

    def _read_topic_offsets(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """End and earliest offsets of every partition of the watched topics."""
        admin = self._admin_client()
        topics = sorted({topic for wanted in self.groups.values() for topic in wanted})
        described = admin.describe_topics(topics)
        partitions = [
            TopicPartition(entry["name"], part["partition_index"])
            for entry in described
            if not entry.get("error_code")
            for part in entry["partitions"]
        ]
        ends = self._read_offsets(partitions, OffsetSpec.LATEST)
        return ends, self._read_offsets(partitions, OffsetSpec.EARLIEST)

    def _read_offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[TopicPartition, int]:
        """The end (``OffsetSpec.LATEST``) or earliest offset of each of ``partitions``."""
        found = self._admin_client().list_partition_offsets(dict.fromkeys(partitions, spec))
        return {tp: int(offset.offset) for tp, offset in found.items()}

    def _failed(self, group: str, exc: Exception) -> None:
        if self._stop.is_set():
            # A read that outlived stop() (the broker going away with the stack): nobody wants its lag,
            # and counted, it raised the failures alert of a process that goes on serving (the console).
            return
        self.read_failures.labels(group).inc()
        now = time.monotonic()
        warned_at = self._warned_at.get(group)
        quiet = warned_at is not None and now - warned_at < WARN_EVERY_S
        if not quiet:
            self._warned_at[group] = now
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "group lag not read: its samples are dropped until a read succeeds",
            extra={"group": group, "error": f"{type(exc).__name__}: {exc}"},
        )
