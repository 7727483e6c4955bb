"""The console's Prometheus metrics: queue depth, decisions by action, time to decision.

Queue depth and decisions are read from the task table at scrape time; the two histograms time the
decisions made on the web page (the Label Studio import has no claim time to measure from)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.console.decisions import DECISIONS
from services.console.tasks import TaskStore

# A review takes seconds to minutes; an item may wait in the queue for days.
DECISION_SECONDS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_H = 3600.0
TASK_AGE_SECONDS_BUCKETS = (60.0, 300.0, 900.0, _H, 4 * _H, 12 * _H, 24 * _H, 72 * _H, 168 * _H)


class _QueueCollector(Collector):
    """Reads the task table at scrape time, so the gauges are never stale."""

    def __init__(self, tasks: TaskStore) -> None:
        self._tasks = tasks

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily(
            "skuforge_console_tasks", "Tasks in the console's table, by state.", labels=["state"]
        )
        for state, count in self._tasks.counts().items():
            depth.add_metric([state], count)
        yield depth
        oldest = GaugeMetricFamily(
            "skuforge_console_oldest_task_age_seconds",
            "Seconds the oldest task waiting for a decision (pending or claimed) has waited; 0 when none. "
            "Not one no decision on which can be sent (skuforge_console_unsendable_tasks).",
        )
        waiting_since = self._tasks.oldest_waiting_at()
        oldest.add_metric([], 0.0 if waiting_since is None else max(0.0, self._tasks.clock() - waiting_since))
        yield oldest
        unsendable = GaugeMetricFamily(
            "skuforge_console_unsendable_tasks",
            "Tasks waiting that no decision can be sent for (stored with a character the contract refuses "
            "in an object's URI); not in the oldest task's age. Gate the item again, or withdraw its photo.",
        )
        unsendable.add_metric([], self._tasks.unsendable_waiting())
        yield unsendable
        outbox = GaugeMetricFamily(
            "skuforge_console_unpublished_decisions",
            "Decisions recorded but not yet acknowledged by the broker.",
        )
        outbox.add_metric([], self._tasks.unpublished_count())
        yield outbox
        refused = GaugeMetricFamily(
            "skuforge_console_refused_decisions",
            "Decisions set aside, not sent: the broker refused them for good (over the topic's "
            "max.message.bytes), or this version cannot read them.",
        )
        refused.add_metric([], self._tasks.refused_count())
        yield refused
        # From the table, not counted as the web page decides: decisions the Label Studio import records
        # (another process, the same table) were missing from the console's /metrics.
        decided = CounterMetricFamily(
            "skuforge_console_decisions",
            "Decisions by action (approve_predicted, approve_expected, approve_edited, reject), from the "
            "web page and the Label Studio import alike.",
            labels=["action"],
        )
        counts = self._tasks.decision_counts()
        for action in DECISIONS:
            decided.add_metric([action], counts.get(action, 0))
        yield decided


class ConsoleMetrics:
    """Registered into ``registry`` (the intake stage's, so one /metrics serves both)."""

    def __init__(self, tasks: TaskStore, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(_QueueCollector(tasks))
        self.decision_seconds = Histogram(
            "skuforge_console_decision_seconds",
            "Seconds from a reviewer's claim to their decision (time to decision).",
            buckets=DECISION_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.task_age_seconds = Histogram(
            "skuforge_console_task_age_seconds",
            "Seconds from an item's arrival in the queue to its decision.",
            buckets=TASK_AGE_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.withdrawn = Counter(
            "skuforge_console_tasks_withdrawn_total",
            "Waiting tasks closed because their reference photo was withdrawn "
            "(skuforge ingest --withdraw-missing); no reviewer decides them.",
            registry=self.registry,
        )
        self.published = Counter(
            "skuforge_console_published_total",
            "correction.resolved events acknowledged by the broker.",
            registry=self.registry,
        )
