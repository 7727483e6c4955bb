"""The health server answers even when a metrics collector raises."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from shared.config import ConfigError
from shared.observability import HealthServer


class _BrokenCollector:
    """Like the console's queue collector when its database read fails."""

    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("database is locked")


def test_a_collector_that_raises_gets_a_500_and_a_log_line_not_a_dropped_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    registry.register(_BrokenCollector())
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


def _run_passthrough(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``skuforge run passthrough`` in a child process with ``env`` set, its store in ``tmp_path`` and
    its broker an address where none listens (the tests end before it is asked)."""
    env = {**os.environ, "SKUFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:1", **env}
    env["SKUFORGE_STORE_URI"] = f"file://{tmp_path}"
    return subprocess.run(
        [sys.executable, "-m", "skuforge_cli", "run", "passthrough"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_metrics_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    """A second copy of a stage on one machine (or another program on the port) ended in socketserver's
    "Address already in use" traceback, which named no setting to change."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # Through the CLI: a stage binds its port before it asks Kafka anything.
        run = _run_passthrough(tmp_path, SKUFORGE_METRICS_PORT=str(port))
        assert run.returncode == 2
        assert run.stderr.strip().splitlines() == [
            f"skuforge run: cannot serve /metrics, /healthz and /readyz on 127.0.0.1:{port} (Address already "
            "in use): another process may hold the port; set SKUFORGE_METRICS_PORT to a free one (0: any)"
        ]
        # The console names its own setting.
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} .*SKUFORGE_CONSOLE_METRICS_PORT"):
            HealthServer(CollectorRegistry(), port=port, port_setting="SKUFORGE_CONSOLE_METRICS_PORT")


def test_a_metrics_host_that_is_no_address_here_is_named_not_blamed_on_the_port(tmp_path: Path) -> None:
    """A host given as host:port (or a URL) failed to resolve, and the one line said another process may
    hold the port and to change SKUFORGE_METRICS_PORT: the wrong setting."""
    run = _run_passthrough(tmp_path, SKUFORGE_METRICS_HOST="0.0.0.0:9100")
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("skuforge run: cannot serve /metrics, /healthz and /readyz on 0.0.0.0:9100:9190 (")
    assert line.endswith(
        "'0.0.0.0:9100' is no address of this machine; set SKUFORGE_METRICS_HOST to one (0.0.0.0: every "
        "interface)"
    ), line
