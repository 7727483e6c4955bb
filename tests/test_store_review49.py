"""A relative file-store root (the default ``file://./var/store``) is resolved against the working
directory; a stage and the console say, once, at start, which absolute root that made.

Every test runs in its own folder (``monkeypatch.chdir(tmp_path)``): the repository's ``var/`` is never
written.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest

from devstack.broker import free_port
from schemas.flow import SKU_INGESTED
from services.console.config import ConsoleSettings
from services.console.server import ConsoleService
from shared.config import load_settings
from shared.runtime import KafkaUnreachable, Stage
from shared.store import open_store
from tests.support.bus import isolated_settings
from tests.support.console import USERS

ROOT_LINE = "object store root"


def _root_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if ROOT_LINE in record.getMessage()]


def _stopped_stage_run(store_uri: str) -> None:
    """A stage run with the stop already asked for: it starts, and ends before it reaches Kafka (the stop
    seen first, exit 0; or, on a loaded machine, the bootstrap's refusal first, KafkaUnreachable: either
    way after the start-up lines)."""
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    stage = Stage("review", settings=load_settings(store_uri=store_uri, kafka_bootstrap=nobody))
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    stage.stop()
    with contextlib.suppress(KafkaUnreachable):
        stage.run(install_signal_handlers=False, serve_health=False)


@pytest.mark.parametrize("store_uri", ["file://./var/store", "var/store", "file://var/store"])
def test_a_stage_logs_the_absolute_root_its_relative_store_root_resolved_to(
    store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two services started from different folders with one relative setting wrote under two roots, and
    every event's URIs named its writer's: nothing at start said where either root was."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="skuforge"):
        _stopped_stage_run(store_uri)
    [line] = _root_lines(caplog)
    assert f"file://{tmp_path}/var/store" in line
    assert "relative" in line and "absolute path" in line


def test_an_absolute_store_root_is_not_said_to_be_relative(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="skuforge"):
        _stopped_stage_run(f"file://{tmp_path}/store")
    assert _root_lines(caplog) == []


def test_the_console_logs_its_relative_store_root_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The console opens the store its intake shares: said once for both, where it opens it."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="skuforge"):
        service = ConsoleService(
            isolated_settings(f"127.0.0.1:{free_port()}", "file://./var/store"),
            ConsoleSettings(
                console_users=USERS,
                console_db_path=str(tmp_path / "console.sqlite3"),
                console_metrics_port=0,
            ),
        )
        service.health.start().stop()  # its port, bound when made, released
    [line] = _root_lines(caplog)
    assert f"file://{tmp_path}/var/store" in line
    assert open_store("var/store", uri_from="the test").base_uri == f"file://{tmp_path}/var/store"
