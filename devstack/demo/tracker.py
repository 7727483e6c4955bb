"""What happened to a set of SKUs, read back from the topics: who made what, when, and what is decided.

:class:`FlowTracker` reads every topic of the flow (and the DLQs) from the beginning, keeps the records
of the SKUs it follows that were produced since ``since_ms`` (and, given ``trace_ids``, those of these
traces produced since ``trace_since_ms``), and de-duplicates them by item, so a redelivered event or an
earlier run of the same SKUs never counts twice. It never commits offsets or joins a group: watching
does not disturb the stages.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from pydantic import ValidationError

from schemas.envelope import DeadLetter
from schemas.events import (
    CorrectionPending,
    GateAccepted,
    ImageGenerated,
    ImageMatted,
    SkuCaptioned,
    SkuIngested,
)
from schemas.flow import PIPELINE, Service
from schemas.topics import Topic
from shared.bus import READ_EXTRA, kafka_connection, read_envelope
from shared.config import Settings

# The stages the demo follows: those that produce (the trainstore writes the store, counted there).
FOLLOWED: dict[str, Service] = {stage.name: stage for stage in PIPELINE if stage.produces}
# Every topic they read or write, in flow order.
WATCHED: tuple[Topic[Any], ...] = tuple(
    dict.fromkeys(topic for stage in FOLLOWED.values() for topic in (*stage.consumes, *stage.produces))
)


@dataclass
class Seen:
    """The first record of one item on one topic: its payload and when the broker got it."""

    payload: Any
    timestamp_ms: int


@dataclass
class FlowState:
    """Per topic, item key → first record seen; plus dead letters, and the records of followed SKUs
    that could not be read (``"<topic> offset <n>: <why>"``)."""

    records: dict[str, dict[str, Seen]] = field(default_factory=lambda: defaultdict(dict))
    dead: list[DeadLetter] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def payloads(self, topic: Topic[Any]) -> list[Any]:
        """Payloads of ``topic``, one per item."""
        return [seen.payload for seen in self.records[topic.name].values()]

    def count(self, topic: Topic[Any]) -> int:
        """Items seen on ``topic``."""
        return len(self.records[topic.name])

    def span_s(self, stage: str) -> float | None:
        """Seconds from the first input the stage could read to its last output, None if no output yet."""
        sources, outputs = FOLLOWED[stage].consumes, FOLLOWED[stage].produces
        firsts = [seen.timestamp_ms for topic in sources for seen in self.records[topic.name].values()]
        lasts = [seen.timestamp_ms for topic in outputs for seen in self.records[topic.name].values()]
        if not firsts or not lasts:
            return None
        return max(0.001, (max(lasts) - min(firsts)) / 1000)

    def outputs(self, stage: str) -> int:
        """Items the stage produced."""
        return sum(self.count(topic) for topic in FOLLOWED[stage].produces)


def item_key(topic: Topic[Any], payload: Any) -> str:
    """What makes a record one item: the SKU for SKU-level topics, the generated item otherwise."""
    if isinstance(payload, SkuIngested | SkuCaptioned):
        return str(payload.sku.sku_id)
    if isinstance(payload, ImageGenerated):
        return str(payload.item_id)
    if isinstance(payload, ImageMatted):
        return str(payload.generated.item_id)
    if isinstance(payload, GateAccepted | CorrectionPending):
        return str(payload.matted.generated.item_id)
    raise TypeError(f"no item key for {topic.name}")


class FlowTracker:
    """Follows ``sku_ids`` through the topics of ``settings``' environment, from ``since_ms`` on.

    ``trace_ids`` (the ingest events' ids, which every event downstream carries as its ``trace_id``)
    also takes the records of those traces from ``trace_since_ms`` on: ingesting the same folder again
    publishes the same event, which a stage process that already handled it skips (shared/runtime.py),
    so its outputs are the ones that process produced the first time.
    """

    def __init__(
        self,
        settings: Settings,
        sku_ids: Iterable[str],
        since_ms: int,
        *,
        trace_ids: Iterable[str] = (),
        trace_since_ms: int | None = None,
    ) -> None:
        self.settings = settings
        self.sku_ids = {sku_id.encode() for sku_id in sku_ids}
        self.since_ms = since_ms
        self.trace_ids = set(trace_ids)
        self.trace_since_ms = since_ms if trace_since_ms is None else min(trace_since_ms, since_ms)
        # The first record of a followed trace produced before since_ms: when an earlier run of it began.
        self.earlier_run_ms: int | None = None
        self.state = FlowState()
        self._topics = {settings.topic_name(topic): topic for topic in WATCHED}
        self._dlqs = {settings.dlq_name(topic) for topic in WATCHED}
        self._consumer = KafkaConsumer(
            **kafka_connection(settings),
            group_id=None,
            enable_auto_commit=False,
            client_id="skuforge-demo",
        )
        self._assigned: set[TopicPartition] = set()
        self._follow_new_partitions()

    def _follow_new_partitions(self) -> None:
        """Read the watched topics' partitions that are new since the last look, from their beginning.

        Taken once, at the start, a topic created or grown after it (a dead-letter topic, a
        ``skuforge topics create --grow``) was never read, and the demo waited out its timeout."""
        self._consumer.topics()  # asks the broker: partitions_for_topic alone answers from its cache
        found = {
            TopicPartition(name, partition)
            for name in [*self._topics, *self._dlqs]
            for partition in self._consumer.partitions_for_topic(name) or ()
        }
        new = found - self._assigned
        if not new:
            return
        # assign() replaces the assignment, keeping the positions of the partitions already read.
        self._assigned |= new
        self._consumer.assign(sorted(self._assigned))
        self._consumer.seek_to_beginning(*sorted(new))

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()

    def poll(self, max_s: float = 2.0) -> FlowState:
        """Read what arrived (for up to ``max_s``) and return the state so far."""
        deadline = time.monotonic() + max_s
        self._follow_new_partitions()
        if not self._assigned:
            return self.state
        while time.monotonic() < deadline:
            batches = self._consumer.poll(timeout_ms=200, max_records=2000)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    self._take(tp.topic, record)
        return self.state

    def _follows(self, timestamp_ms: int, trace_id: str | None) -> bool:
        """Whether a record of a followed SKU belongs to the run followed."""
        if timestamp_ms >= self.since_ms:
            return True
        if trace_id in self.trace_ids and timestamp_ms >= self.trace_since_ms:
            self.earlier_run_ms = min(timestamp_ms, self.earlier_run_ms or timestamp_ms)
            return True
        return False

    def _take(self, topic_name: str, record: Any) -> None:
        if record.timestamp < self.trace_since_ms:
            return
        # Anyone may write to a topic: a record that is not what the topic carries (a stage dead-letters
        # it, with the reason) stopped the demo with a traceback and no report. Passed over, and named.
        try:
            self._read(topic_name, record)
        except ValidationError as exc:
            if record.key in self.sku_ids and record.timestamp >= self.since_ms:
                why = exc.errors()[0]["msg"] if exc.errors() else str(exc)
                self.state.unreadable.append(
                    f"{topic_name} offset {record.offset}: not a {self._expected(topic_name)} ({why})"
                )

    def _expected(self, topic_name: str) -> str:
        return "dead letter" if topic_name in self._dlqs else f"{self._topics[topic_name].name} event"

    def _read(self, topic_name: str, record: Any) -> None:
        if topic_name in self._dlqs:
            letter = DeadLetter.model_validate_json(record.value, extra=READ_EXTRA)
            if (
                letter.sku_id is not None
                and letter.sku_id.encode() in self.sku_ids
                and self._follows(record.timestamp, letter.trace_id)
            ):
                self.state.dead.append(letter)
            return
        if record.key not in self.sku_ids:
            return
        topic = self._topics[topic_name]
        envelope = read_envelope(topic, record.value)
        if not self._follows(record.timestamp, envelope.trace_id):
            return
        payload = envelope.payload
        self.state.records[topic.name].setdefault(item_key(topic, payload), Seen(payload, record.timestamp))
