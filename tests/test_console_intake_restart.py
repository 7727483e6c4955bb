"""``serve console`` without Kafka: its intake restarts, and says why in one line each time."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from devstack.broker import free_port
from services.console.config import ConsoleSettings
from services.console.server import ConsoleService
from tests.support.bus import isolated_settings
from tests.support.console import USERS


def test_an_intake_that_cannot_reach_kafka_logs_one_warning_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An expected, retried fault: each restart logged a full traceback, pages of it in a minute.
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there: a real refused connection
    # kafka-python waits 30 s for a first broker; the test need not.
    monkeypatch.setitem(KafkaConsumer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 300)
    monkeypatch.setitem(KafkaProducer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 300)
    service = ConsoleService(
        isolated_settings(bootstrap, f"file://{tmp_path / 'store'}"),
        ConsoleSettings(
            console_users=USERS,
            console_db_path=str(tmp_path / "console.sqlite3"),
            console_metrics_port=0,
        ),
    )
    caplog.set_level(logging.WARNING, logger="skuforge.console")
    service.start_background()
    try:
        deadline = time.monotonic() + 120  # a bound on a hung test, not a timing assertion
        while not (records := [r for r in caplog.records if "console intake" in r.getMessage()]):
            assert time.monotonic() < deadline, "the intake never said it could not start"
            time.sleep(0.05)
    finally:
        service.stop_background()
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None, "an expected fault needs no traceback"
    assert f"cannot reach Kafka at {bootstrap}" in record.getMessage()
    assert "\n" not in record.getMessage()
