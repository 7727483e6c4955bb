"""Review 45 of the local stack: the metrics table's labels."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from devstack.metrics_doc import registry_metrics


class _EmptyTable(Collector):
    """A scrape-time collector over a table with no rows yet: labelled families with no sample."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("skuforge_test_rows", "Rows, by shelf and state.", labels=["shelf", "state"])
        yield CounterMetricFamily("skuforge_test_moves", "Moves, by action.", labels=["action"])
        yield GaugeMetricFamily("skuforge_test_oldest_seconds", "Oldest row's age.", value=0.0)


def test_a_labelled_collector_family_with_no_sample_is_documented_with_its_labels() -> None:
    """Labels were read off the samples: a family of a collector that had none at documentation time
    (an empty table) went into docs/ops.md with no labels ('—'), as if it had one series."""
    registry = CollectorRegistry()
    registry.register(_EmptyTable())
    found = {name: labels for name, _kind, labels, _help in registry_metrics(registry)}
    assert found == {
        "skuforge_test_rows": ("shelf", "state"),
        "skuforge_test_moves_total": ("action",),
        "skuforge_test_oldest_seconds": (),
    }
