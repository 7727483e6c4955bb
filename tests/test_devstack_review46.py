"""Review 46 of the local stack: the metrics table's labels for a collector's histogram and summary."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from devstack.metrics_doc import registry_metrics


class _Latencies(Collector):
    """A scrape-time collector with a histogram and a summary, each with one labelled series."""

    def collect(self) -> Iterator[HistogramMetricFamily | SummaryMetricFamily]:
        histogram = HistogramMetricFamily("skuforge_test_wait_seconds", "Wait, by shelf.", labels=["shelf"])
        histogram.add_metric(["top"], buckets=[("0.5", 1.0), ("+Inf", 2.0)], sum_value=1.5)
        yield histogram
        summary = SummaryMetricFamily("skuforge_test_pick_seconds", "Pick time, by shelf.", labels=["shelf"])
        summary.add_metric(["top"], count_value=2, sum_value=1.5)
        yield summary


class _QuantileSummary(Collector):
    """A summary that exports quantiles (a custom collector may; prometheus_client's Summary does not)."""

    def collect(self) -> Iterator[SummaryMetricFamily]:
        summary = SummaryMetricFamily("skuforge_test_pick_seconds", "Pick time.", labels=["shelf"])
        summary.add_sample("skuforge_test_pick_seconds", {"shelf": "top", "quantile": "0.5"}, 0.7)
        summary.add_metric(["top"], count_value=2, sum_value=1.5)
        yield summary


def test_a_collector_histogram_is_documented_without_its_bucket_label() -> None:
    """The labels were read off every sample, so a collector's histogram listed `le` (the bucket bound
    on its _bucket series) as if a user could choose it, beside `shelf`; a Histogram wrapper did not."""
    registry = CollectorRegistry()
    registry.register(_Latencies())
    found = {name: labels for name, _kind, labels, _help in registry_metrics(registry)}
    assert found == {"skuforge_test_wait_seconds": ("shelf",), "skuforge_test_pick_seconds": ("shelf",)}


def test_a_collector_summary_is_documented_without_its_quantile_label() -> None:
    registry = CollectorRegistry()
    registry.register(_QuantileSummary())
    found = {name: labels for name, _kind, labels, _help in registry_metrics(registry)}
    assert found == {"skuforge_test_pick_seconds": ("shelf",)}
