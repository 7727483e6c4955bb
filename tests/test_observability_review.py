"""The health server answers even when a metrics collector raises."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from shared.observability import HealthServer


class _BrokenCollector:
    """Like the console's queue collector when its database read fails."""

    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("database is locked")


def test_a_collector_that_raises_gets_a_500_and_a_log_line_not_a_dropped_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    registry.register(_BrokenCollector())  # type: ignore[arg-type]
    server = HealthServer(registry, port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with (
            caplog.at_level(logging.ERROR, logger="skuforge.observability"),
            pytest.raises(urllib.error.HTTPError, match="500") as raised,
        ):
            urllib.request.urlopen(base + "/metrics", timeout=5)
        assert b"RuntimeError: database is locked" in raised.value.read()
        assert any(record.exc_info for record in caplog.records)
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
    finally:
        server.stop()
