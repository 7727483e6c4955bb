"""The console on the real broker: intake de-duplicates redeliveries, decisions reach correction.resolved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from devstack.broker import free_port
from schemas.envelope import Envelope
from schemas.events import CorrectionPending, CorrectionResolved
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, Topic
from services.console.config import ConsoleSettings
from services.console.relay import DecisionRelay
from services.console.server import ConsoleService
from services.console.tasks import decision_event_id
from shared.config import Settings
from shared.store import FileStore
from tests.support.bus import create_topics, isolated_settings, read_topic
from tests.support.console import (
    USERS,
    accepted_envelope,
    build_console,
    decided,
    flagged_item,
    login,
    pending_envelope,
)
from tests.support.polling import wait_for
from tests.support.signals import as_from_a_shell

pytestmark = pytest.mark.kafka


def send(settings: Settings, values: list[bytes], key: bytes, topic: Topic[Any] = CORRECTION_PENDING) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for value in values:
        producer.send(settings.topic_name(topic), key=key, value=value)
    producer.flush()
    producer.close()


@pytest.fixture
def service(kafka_bootstrap: str, tmp_path: Path) -> Iterator[ConsoleService]:
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED)
    console = ConsoleSettings(
        console_users=USERS,
        console_db_path=str(tmp_path / "console.sqlite3"),
        console_metrics_port=0,
    )
    service = ConsoleService(settings, console, store=FileStore(tmp_path / "store"))
    service.start_background()
    try:
        yield service
    finally:
        service.stop_background()


def test_redelivered_pending_event_makes_one_task_and_the_decision_is_published(
    service: ConsoleService, kafka_bootstrap: str
) -> None:
    settings = service.settings
    envelope = pending_envelope(flagged_item(service.store, 0))
    value = envelope.model_dump_json().encode()
    # The gate's event twice (a redelivery), and one message that is not an event at all.
    send(settings, [value, value, b"{not json"], key=envelope.sku_id.encode())
    dlq = read_topic(kafka_bootstrap, settings.dlq_name(CORRECTION_PENDING), expect=1)
    assert len(dlq) == 1 and json.loads(dlq[0].value)["reason"] == "not_json"
    wait_for("the intake to open one task", lambda: service.tasks.counts()["pending"] == 1, 60.0)
    time.sleep(1.0)  # the copy was consumed too (it follows the first in the partition); still one task
    assert [t.task_id for t in service.tasks.query()] == [envelope.event_id]
    assert [e.action for e in service.tasks.audit()] == ["intake"]

    client = TestClient(service.app, base_url="http://console.test")
    token = login(client)
    assert (
        client.post(f"/api/tasks/{envelope.event_id}/claim", headers={"X-CSRF-Token": token}).status_code
        == 200
    )
    decided = client.post(
        f"/api/tasks/{envelope.event_id}/decision",
        data={"decision": "approve_expected"},
        headers={"X-CSRF-Token": token},
    )
    assert decided.status_code == 200, decided.text

    records = read_topic(kafka_bootstrap, settings.topic_name(CORRECTION_RESOLVED), expect=1)
    assert len(records) == 1 and records[0].key == envelope.sku_id.encode()
    event = Envelope[CorrectionResolved].model_validate_json(records[0].value)
    assert event.event_id == decision_event_id(envelope.event_id)
    assert event.trace_id == envelope.trace_id and event.producer == "console"
    assert event.payload.decision == "approve_expected" and event.payload.reviewer == "alice"
    assert event.payload.final_mask == envelope.payload.matted.generated.expected_mask
    assert isinstance(event.payload.pending, CorrectionPending)
    wait_for(
        "the decision to be published",
        lambda: service.tasks.outbox(envelope.event_id).published_at is not None,  # type: ignore[union-attr]
        60.0,
    )

    # One /metrics serves the intake's runtime metrics and the console's own.
    with urllib.request.urlopen(f"http://127.0.0.1:{service.health.port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    intake = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "skuforge_messages_total"
        and sample.labels["stage"] == "console-intake"
        and sample.labels["topic"] == settings.topic_name(CORRECTION_PENDING)  # gate.accepted's are 0
    }
    # Both copies were consumed ("duplicate" when the runtime saw the first one committed) and one DLQ'd.
    assert intake.get("ok", 0) + intake.get("duplicate", 0) == 2 and intake["dlq"] == 1
    assert 'skuforge_console_decisions_total{action="approve_expected"} 1.0' in metrics
    assert 'skuforge_console_tasks{state="approved"} 1.0' in metrics
    assert "skuforge_console_published_total 1.0" in metrics


def test_the_gate_replayed_accepting_a_flagged_item_closes_its_waiting_task(
    service: ConsoleService, kafka_bootstrap: str
) -> None:
    """After a threshold change the gate accepts on replay an item it had flagged: the trainstore stores
    it, and the console's task of it closes as ``accepted`` instead of waiting for a reviewer."""
    settings = service.settings
    flagged, waiting = (pending_envelope(flagged_item(service.store, index)) for index in (0, 1))
    for envelope in (flagged, waiting):
        send(settings, [envelope.model_dump_json().encode()], key=envelope.sku_id.encode())
    wait_for("the intake to open two tasks", lambda: service.tasks.counts()["pending"] == 2, 60.0)

    replayed = accepted_envelope(flagged, produced_at=flagged.produced_at + timedelta(seconds=60))
    send(settings, [replayed.model_dump_json().encode()], key=replayed.sku_id.encode(), topic=GATE_ACCEPTED)

    wait_for(
        "the gate's replayed acceptance to close the flagged task",
        lambda: service.tasks.get(flagged.event_id).state == "accepted",
        60.0,
    )
    assert [task.task_id for task in service.tasks.query()] == [waiting.event_id]
    assert service.tasks.get(flagged.event_id).decided_by == "gate"
    assert service.tasks.unpublished_count() == 0  # no correction.resolved: the gate's event decided it


def test_a_backlog_of_several_pages_is_published_in_one_round_and_by_stop(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, CORRECTION_RESOLVED)
    parts = build_console(tmp_path, settings=settings)
    # Seven decisions waited out a broker outage; the relay reads the outbox three at a time.
    backlog = decided(parts, 7)
    relay = DecisionRelay(parts.tasks, settings, page_size=3)
    try:
        assert relay.publish_pending() == 7  # one round, not one page per idle poll
    finally:
        relay.close()
    assert parts.tasks.unpublished_count() == 0

    # Seven more wait when the console shuts down: stop() sends them all before it returns.
    at_shutdown = decided(parts, 7, first=7)
    DecisionRelay(parts.tasks, settings, page_size=3).stop()
    assert parts.tasks.unpublished_count() == 0

    records = read_topic(kafka_bootstrap, settings.topic_name(CORRECTION_RESOLVED), expect=14)
    published = [
        Envelope[CorrectionResolved].model_validate_json(record.value).event_id for record in records
    ]
    assert sorted(published) == sorted(decision_event_id(task_id) for task_id in backlog + at_shutdown)


def _serve_console_env(kafka_bootstrap: str, tmp_path: Path, *, metrics_port: int) -> dict[str, str]:
    """The environment of a `skuforge serve console` child on the session's broker, its topics made."""
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED)
    return {
        **os.environ,
        "SKUFORGE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SKUFORGE_TOPIC_NAMESPACE": settings.topic_namespace,
        "SKUFORGE_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "SKUFORGE_STORE_URI": settings.store_uri,
        "SKUFORGE_CONSOLE_DB_PATH": str(tmp_path / "tasks.sqlite3"),
        "SKUFORGE_CONSOLE_USERS": "alice:change-me",
        "SKUFORGE_CONSOLE_SESSION_SECRET": "a-test-secret-of-some-length",
        "SKUFORGE_CONSOLE_HOST": "127.0.0.1",
        "SKUFORGE_CONSOLE_PORT": str(free_port()),
        "SKUFORGE_CONSOLE_METRICS_PORT": str(metrics_port),
    }


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_serve_console_stops_its_intake_and_relay_on_sigterm(
    kafka_bootstrap: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGTERM, or SIGHUP (its terminal closed): uvicorn stops, then the intake and the relay do, and
    the process exits 0.

    uvicorn re-raises the SIGTERM it caught once it has shut down; with Python's default handler
    back in place that killed the process (exit -15) before the intake committed or the relay sent
    what waited in the outbox. uvicorn hears no SIGHUP: its default killed the process (exit -1)."""
    metrics_port = free_port()
    env = _serve_console_env(kafka_bootstrap, tmp_path, metrics_port=metrics_port)
    process = subprocess.Popen(
        # The checkout under test: the venv's `skuforge` script imports the package it was installed from.
        [sys.executable, "-m", "skuforge_cli", "serve", "console"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_from_a_shell,  # SIGHUP not ignored, as under a test runner started by nohup
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the console's intake never joined its group"
            time.sleep(0.5)
        process.send_signal(stop)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "console stopped" in output


# `skuforge serve console` held where its SIGTERM handler is set and uvicorn's not yet: it says "held",
# then waits for a line on its stdin (sent once the test has sent its stop).
HELD_BEFORE_UVICORN = """
import sys
from services.console import server

def held(then=server.hang_up_as_sigterm):
    print("held", flush=True)
    sys.stdin.readline()
    then()

server.hang_up_as_sigterm = held
from skuforge_cli.main import main
sys.exit(main(["serve", "console"]))
"""


def test_a_sigterm_before_uvicorn_hears_signals_still_stops_the_console(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The handler set for after uvicorn (which re-raises the SIGTERM it caught) did nothing: a SIGTERM
    # before uvicorn set its own was dropped, and the console served on, to be killed after the grace.
    env = _serve_console_env(kafka_bootstrap, tmp_path, metrics_port=free_port())
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_BEFORE_UVICORN],
        cwd=Path(__file__).resolve().parent.parent,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_shell,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == "held\n", process.communicate()
        process.send_signal(signal.SIGTERM)
        process.stdin.write("go on\n")
        process.stdin.flush()
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the console served on after its SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "console stopped" in err
