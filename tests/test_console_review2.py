"""Console defects an operator would hit: /metrics hanging on a locked task table, an outbox backlog
gauge stuck at 10,000, and a relay shutdown that sends with (and closes) the producer the relay thread
is still using."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import services.console.relay as relay_module
from schemas.topics import Topic
from services.console.relay import DecisionRelay
from shared.config import load_settings
from tests.support.console import ConsoleParts, build_console, decided, flagged_item, pending_envelope


def scrape(parts: ConsoleParts) -> dict[str, float]:
    """The console's gauges as Prometheus reads them (name{state} -> value)."""
    text = generate_latest(parts.console.metrics.registry).decode()
    return {
        sample.name + (f"{{{sample.labels['state']}}}" if "state" in sample.labels else ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_answer_while_another_writer_holds_the_task_table(tmp_path: Path) -> None:
    parts = build_console(tmp_path, lease_s=60.0)
    envelope = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(envelope)
    parts.tasks.claim(envelope.event_id, "alice", 60.0)
    parts.clock.advance(61.0)  # alice's lease ran out
    # Another writer holds the table (the intake process, a decision storing its mask...).
    writer = sqlite3.connect(parts.tasks.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    scraped: dict[str, Any] = {}
    scraper = threading.Thread(target=lambda: scraped.update(scrape(parts)), daemon=True)
    try:
        scraper.start()
        scraper.join(timeout=5.0)
        assert not scraper.is_alive(), "/metrics waited for the task table's write lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        scraper.join()
    # The expired claim already counts as waiting again.
    assert scraped["skuforge_console_tasks{pending}"] == 1.0
    assert scraped["skuforge_console_tasks{claimed}"] == 0.0


def test_unpublished_gauge_counts_the_whole_outbox_backlog(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    [task_id] = decided(parts, 1)
    # 10,000 more decisions waiting for the broker: copies of the recorded one, written straight to
    # the outbox (recording each through the web would take minutes).
    with sqlite3.connect(parts.tasks.path) as db:
        row = db.execute("SELECT * FROM outbox WHERE task_id = ?", (task_id,)).fetchone()
        db.executemany(
            "INSERT INTO outbox (event_id, task_id, sku_id, trace_id, payload_json, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(f"{n:032x}", f"{n:032x}", row[2], row[3], row[4], row[5] + n) for n in range(1, 10_001)],
        )
    assert scrape(parts)["skuforge_console_unpublished_decisions"] == 10_001
    parts.tasks.mark_published(parts.tasks.unpublished(limit=1)[0].event_id)
    assert scrape(parts)["skuforge_console_unpublished_decisions"] == 10_000


class SlowBroker:
    """Stands in for the Kafka publisher: the first send waits until the test lets it through."""

    calls: list[tuple[str, str]] = []
    first_send_started = threading.Event()
    let_through = threading.Event()

    def __init__(self, settings: object, producer_name: str) -> None:
        self.closed = False

    def publish(self, topic: Topic[Any], payload: object, **fields: str) -> None:
        assert not self.closed, "sent with a closed producer"
        SlowBroker.calls.append(("send", threading.current_thread().name))
        if not SlowBroker.first_send_started.is_set():
            SlowBroker.first_send_started.set()
            SlowBroker.let_through.wait(timeout=30)
        assert not self.closed, "the producer was closed under an unacknowledged send"

    def close(self) -> None:
        SlowBroker.calls.append(("close", threading.current_thread().name))
        self.closed = True


def test_relay_shutdown_leaves_the_producer_to_a_relay_thread_still_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = build_console(tmp_path)
    task_ids = decided(parts, 2)
    monkeypatch.setattr(relay_module, "Publisher", SlowBroker)
    monkeypatch.setattr(SlowBroker, "calls", [])
    monkeypatch.setattr(SlowBroker, "first_send_started", threading.Event())
    monkeypatch.setattr(SlowBroker, "let_through", threading.Event())
    relay = DecisionRelay(parts.tasks, load_settings(flush_timeout_s=0.1)).start()
    assert SlowBroker.first_send_started.wait(timeout=10)
    # The broker is slow to acknowledge: shutdown gives up waiting for the relay thread.
    relay.stop()
    SlowBroker.let_through.set()
    assert relay._thread is not None
    relay._thread.join(timeout=10)
    assert not relay._thread.is_alive()
    # Only the relay thread sent, and it closed the producer after its send. The shutdown drain's time
    # (SHUTDOWN_DRAIN_S) was up by then, so the other decision waits in the outbox for the next start.
    assert SlowBroker.calls == [("send", "console-relay"), ("close", "console-relay")]
    published = [parts.tasks.outbox(task_id).published_at is not None for task_id in task_ids]  # type: ignore[union-attr]
    assert sorted(published) == [False, True]
