"""What happened to a set of SKUs, read back from the topics: who made what, when, and what is decided.

:class:`FlowTracker` reads every topic of the flow (and the DLQs) from the beginning, keeps the records
of the SKUs it follows that were produced since ``since_ms``, and de-duplicates them by item, so a
redelivered event or an earlier run of the same SKUs never counts twice. It never commits offsets or
joins a group: watching does not disturb the stages.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

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
from shared.bus import READ_EXTRA, read_envelope
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
    """Per topic, item key → first record seen; plus dead letters."""

    records: dict[str, dict[str, Seen]] = field(default_factory=lambda: defaultdict(dict))
    dead: list[DeadLetter] = field(default_factory=list)

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
    """Follows ``sku_ids`` through the topics of ``settings``' environment, from ``since_ms`` on."""

    def __init__(self, settings: Settings, sku_ids: Iterable[str], since_ms: int) -> None:
        self.settings = settings
        self.sku_ids = {sku_id.encode() for sku_id in sku_ids}
        self.since_ms = since_ms
        self.state = FlowState()
        self._topics = {settings.topic_name(topic): topic for topic in WATCHED}
        self._dlqs = {settings.dlq_name(topic) for topic in WATCHED}
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            client_id="skuforge-demo",
        )
        partitions = []
        for name in [*self._topics, *sorted(self._dlqs)]:
            for partition in self._consumer.partitions_for_topic(name) or ():
                partitions.append(TopicPartition(name, partition))
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning()

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()

    def poll(self, max_s: float = 2.0) -> FlowState:
        """Read what arrived (for up to ``max_s``) and return the state so far."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            batches = self._consumer.poll(timeout_ms=200, max_records=2000)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    self._take(tp.topic, record)
        return self.state

    def _take(self, topic_name: str, record: Any) -> None:
        if record.timestamp < self.since_ms:
            return
        if topic_name in self._dlqs:
            letter = DeadLetter.model_validate_json(record.value, extra=READ_EXTRA)
            if letter.sku_id is not None and letter.sku_id.encode() in self.sku_ids:
                self.state.dead.append(letter)
            return
        if record.key not in self.sku_ids:
            return
        topic = self._topics[topic_name]
        payload = read_envelope(topic, record.value).payload
        self.state.records[topic.name].setdefault(item_key(topic, payload), Seen(payload, record.timestamp))
