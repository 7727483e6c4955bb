"""``skuforge dashboard render`` against a real Prometheus: a label value is drawn as written, and a panel
whose queries return only NaN (a quantile of nothing) says it has no data, as an empty one does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from devstack.broker import free_port
from devstack.dashboard import main
from devstack.prometheus import PrometheusServer, scrape_config
from tests.support.polling import wait_for

pytest.importorskip("matplotlib", reason="the docs extra (pip install 'skuforge[docs]') draws the panels")

# What a stage's /metrics says: the lag of a group whose name holds `$` and a backslash (the consumer
# group prefix is free text), and a gate that has decided nothing yet (its IoU histogram empty).
ODD_GROUP = r"team$\ENV$.gate"
# How long Prometheus may take to scrape what a test needs (every 0.5 s, so seconds on an idle machine):
# generous for a loaded CI machine, and the test fails naming the query if it runs out.
SCRAPED_WITHIN_S = 120.0


def lag_registry(lag_by_group: dict[str, int]) -> CollectorRegistry:
    """What a stage's /metrics says of each consumer group's lag (messages behind on image.matted)."""
    registry = CollectorRegistry()
    lag = Gauge("skuforge_consumer_group_lag_messages", "lag", ["group", "topic"], registry=registry)
    for group, messages in lag_by_group.items():
        lag.labels(group, "image.matted").set(messages)
    return registry


@contextmanager
def scraping(
    registry: CollectorRegistry, tmp_path: Path, ready: str, at_least: int
) -> Iterator[PrometheusServer]:
    """A Prometheus scraping ``registry`` (served as the gate's /metrics), once the query ``ready``
    reaches ``at_least``; fails the test, naming the query, if it does not within ``SCRAPED_WITHIN_S``."""
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        config = scrape_config({"gate": port}, scrape_interval_s=0.5, rule_files=[])
        prometheus = PrometheusServer(tmp_path / "prometheus", config).start()
        try:
            # Before: after 30 s the test went on without the data and failed on what the render said
            # ("Consumer group lag" in no data), a slow machine's scrapes read as the render's fault.
            wait_for(
                f"Prometheus to scrape the gate until {ready} >= {at_least}",
                lambda: (prometheus.value(ready) or 0) >= at_least,
                timeout_s=SCRAPED_WITHIN_S,
                every_s=0.5,
            )
            yield prometheus
        finally:
            prometheus.stop()
    finally:
        server.shutdown()


def render(prometheus: PrometheusServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run ``skuforge dashboard render`` on the last 2 minutes of ``prometheus``; checks it wrote the
    image and said so, and returns what it said after that, line by line."""
    out = tmp_path / "panels.png"
    assert main(["render", "--prometheus", prometheus.url, "--out", str(out), "--minutes", "2"]) == 0
    assert out.stat().st_size > 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"wrote {out}"
    return said[1:]


@pytest.fixture
def prometheus(prometheus_bin: str, tmp_path: Path) -> Iterator[PrometheusServer]:
    registry = lag_registry({ODD_GROUP: 3})
    Histogram("skuforge_gate_iou", "IoU", buckets=(0.5, 0.9, 1.0), registry=registry)
    # Three scrapes, so the rate() of the IoU buckets has samples to work on.
    with scraping(registry, tmp_path, "count_over_time(skuforge_gate_iou_count[1m])", 3) as prometheus:
        yield prometheus


def test_render_draws_odd_label_values_and_says_which_panels_have_no_data(
    prometheus: PrometheusServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a label value between two `$` was read as matplotlib mathtext, and `\ENV` failed the
    # whole render ("skuforge dashboard render: ...: Unknown symbol", exit 1); the gate's NaN-only
    # quantiles were drawn as an empty plot with a legend, not as "no data".
    said = render(prometheus, tmp_path, capsys)
    no_data = said[0].removeprefix("no data in this run: ").split("; ")
    assert "Gate IoU distribution" in no_data
    assert "Consumer group lag" not in no_data and "Dead letters" in no_data


@pytest.fixture
def prometheus_of_many_groups(prometheus_bin: str, tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus scraping the lag of 11 consumer groups: more series than a panel draws."""
    registry = lag_registry({f"group-{number}": number for number in range(11)})
    with scraping(registry, tmp_path, "count(skuforge_consumer_group_lag_messages)", 11) as prometheus:
        yield prometheus


def test_render_says_which_panel_left_series_out_and_how_many(
    prometheus_of_many_groups: PrometheusServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a panel drew the first 8 series of each query and dropped the rest without a word.
    said = render(prometheus_of_many_groups, tmp_path, capsys)
    assert "left out (8 series a query at most): Consumer group lag: 3 series" in said
