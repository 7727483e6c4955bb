"""Logs are JSON lines carrying trace_id and sku_id; the health server answers its three paths."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest

from shared.observability import HealthServer, JsonFormatter, StageMetrics, TextFormatter, log_context


def test_json_log_lines_carry_trace_and_sku() -> None:
    record = logging.makeLogRecord(
        {
            "name": "skuforge.test",
            "levelname": "WARNING",
            "msg": "dead-lettered %s",
            "args": ("x",),
            "reason": "not_json",
        }
    )
    with log_context("trace-1", "SKU-1"):
        line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "dead-lettered x"
    assert (entry["trace_id"], entry["sku_id"], entry["reason"]) == ("trace-1", "SKU-1", "not_json")
    assert "trace_id" not in json.loads(JsonFormatter().format(record))  # context does not leak


def test_text_log_lines_keep_the_fields() -> None:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": "training", "step": 50})
    with log_context("trace-9", None):
        line = TextFormatter().format(record)
    assert line.endswith("training step=50 trace_id=trace-9")


def test_a_value_read_from_input_cannot_forge_a_text_log_line() -> None:
    """Before, a file name or detail with a newline went into the text format as it was: a reader saw
    a second record (here a forged ERROR) that no stage wrote."""
    forged = "x.png\r\n2026-12-05 06:00:00,000 ERROR skuforge.trainstore: forged\u2028"
    record = logging.makeLogRecord(
        {"name": "t", "levelname": "INFO", "msg": "photo %s skipped", "args": (forged,), "file": forged}
    )
    line = TextFormatter().format(record)
    assert line.splitlines() == [line]
    assert line.endswith(
        "photo x.png\\r\\n2026-12-05 06:00:00,000 ERROR skuforge.trainstore: forged\\u2028 skipped "
        "file=x.png\\r\\n2026-12-05 06:00:00,000 ERROR skuforge.trainstore: forged\\u2028"
    )


def test_health_server_paths() -> None:
    ready = {"value": False}
    metrics = StageMetrics("unit")
    metrics.messages.labels("unit", "t", "ok").inc()
    server = HealthServer(metrics.registry, port=0, ready=lambda: ready["value"]).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert (
            b'skuforge_messages_total{outcome="ok",stage="unit",topic="t"} 1.0'
            in urllib.request.urlopen(base + "/metrics").read()
        )
        assert urllib.request.urlopen(base + "/healthz").status == 200
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(base + "/readyz")
        ready["value"] = True
        assert urllib.request.urlopen(base + "/readyz").status == 200
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(base + "/nope")
    finally:
        server.stop()
