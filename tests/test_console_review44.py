"""The console's outbox at scale (published decisions stay in the outbox for ever, so the queries a
relay round, a /metrics scrape and a queue load make read through an index, not the whole table), a
decision in it that no longer reads, a decision form's text that is not in the form's charset, and the
queue's all-list at scale (read through an index in its order, not a scan and sort of every task)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from schemas.topics import CORRECTION_RESOLVED
from services.console.relay import DecisionRelay
from services.console.tasks import TaskFilter, TaskStore, decision_event_id
from skuforge_cli.main import main as cli_main
from tests.support.bus import create_topics, isolated_settings, read_topic
from tests.support.console import (
    ConsoleParts,
    build_console,
    decided,
    one_task,
    traced_statements,
    use_cli_on,
    with_flagged,
)

OUTBOX_INDEXES = {"outbox_unsent", "outbox_refused"}


def _outbox_with_every_kind(parts: ConsoleParts) -> None:
    """Decisions in the outbox: the oldest no longer reads, one waits, one was published, one was refused."""
    unreadable, waiting, published, refused = decided(parts, 4)
    with sqlite3.connect(parts.tasks.path) as db:
        db.execute("UPDATE outbox SET payload_json = '{}' WHERE task_id = ?", (unreadable,))
        db.execute("UPDATE outbox SET created_at = created_at - 1 WHERE task_id = ?", (unreadable,))
    parts.tasks.mark_published(decision_event_id(published))
    parts.tasks.mark_refused(decision_event_id(refused), "MessageSizeTooLargeError")
    assert [event.task_id for event in parts.tasks.unpublished()] == [waiting]


def _index_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


@pytest.mark.parametrize(
    ("reader", "index", "pages"),
    [
        pytest.param(lambda tasks: tasks.unsent(limit=1), "outbox_unsent", 1, id="relay"),
        # Reading on past the unreadable row at the head: a second page, after its key.
        pytest.param(lambda tasks: tasks.unpublished(limit=1), "outbox_unsent", 2, id="unpublished"),
        pytest.param(lambda tasks: tasks.unpublished_count(), "outbox_unsent", 1, id="metrics-unsent"),
        pytest.param(lambda tasks: tasks.refused_count(), "outbox_refused", 1, id="metrics-refused"),
        pytest.param(lambda tasks: tasks.refused_reasons(), "outbox_refused", 1, id="queue"),
        pytest.param(lambda tasks: tasks.refused(), "outbox_refused", 1, id="cli-refused"),
    ],
)
def test_the_outbox_reads_of_the_relay_metrics_and_queue_use_an_index_not_the_whole_outbox(
    reader: Callable[[TaskStore], object],
    index: str,
    pages: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, each of these read every row of the outbox: every decision ever made, published or not.
    parts = build_console(tmp_path)
    _outbox_with_every_kind(parts)
    # Opened before the tracing: its EXPLAINs are not traced.
    plan_of = closing(sqlite3.connect(parts.tasks.path))
    statements = traced_statements(monkeypatch)

    reader(parts.tasks)

    reads = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT") and " outbox" in sql]
    assert len(reads) == pages, statements
    with plan_of as db:
        for sql in reads:
            plan = [detail for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert "SCAN outbox" not in plan, (sql, plan)  # a scan of the table itself, every row
            used = rf"outbox USING (COVERING )?INDEX {index}\b"
            assert any(re.search(used, step) for step in plan), (sql, plan)


def test_an_outbox_made_before_its_indexes_is_given_them_and_reads_as_before(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    [waiting] = decided(parts, 1)
    with sqlite3.connect(parts.tasks.path) as db:  # as an earlier version left it
        for name in OUTBOX_INDEXES & _index_names(parts.tasks.path):
            db.execute(f"DROP INDEX {name}")
    assert not OUTBOX_INDEXES & _index_names(parts.tasks.path)

    reopened = TaskStore(parts.tasks.path)
    assert _index_names(parts.tasks.path) >= OUTBOX_INDEXES
    assert [event.task_id for event in reopened.unpublished()] == [waiting]
    assert (reopened.unpublished_count(), reopened.refused_count()) == (1, 0)


@pytest.mark.kafka
def test_a_waiting_decision_that_no_longer_reads_is_set_aside_and_listed_not_counted_as_waiting(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the relay passed over it every round (an error logged each time) and it stayed in
    # skuforge_console_unpublished_decisions for ever: SkuforgeDecisionsUnpublished fired at every
    # quiet spell of 15 minutes, its runbook naming the broker, and no command listed it.
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, CORRECTION_RESOLVED)
    parts = build_console(tmp_path, settings=settings)
    spoiled, readable = decided(parts, 2)
    with sqlite3.connect(parts.tasks.path) as db:  # stored under a schema this version refuses
        db.execute("UPDATE outbox SET payload_json = '{}' WHERE task_id = ?", (spoiled,))

    relay = DecisionRelay(parts.tasks, settings)
    try:
        assert relay.publish_pending() == 1
        assert relay.publish_pending() == 0
    finally:
        relay.close()

    [record] = read_topic(kafka_bootstrap, settings.topic_name(CORRECTION_RESOLVED), expect=1)
    assert decision_event_id(readable).encode() in record.value
    metrics = generate_latest(parts.console.metrics.registry).decode()
    assert "skuforge_console_unpublished_decisions 0.0" in metrics
    assert "skuforge_console_refused_decisions 1.0" in metrics
    use_cli_on(parts, monkeypatch)
    assert cli_main(["console", "refused"]) == 0
    [listed] = map(json.loads, capsys.readouterr().out.splitlines())
    assert listed["task_id"] == spoiled
    assert f"the decision of task {spoiled} no longer reads" in listed["unreadable"]
    assert f"the decision of task {spoiled} no longer reads" in listed["refused_reason"]


BOUNDARY = "skuforge-review44"


def _multipart(fields: dict[str, bytes]) -> bytes:
    """A multipart/form-data body of ``fields``, their bytes sent as they are."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields.items()
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param(b"caf\xe9", id="latin-1"),
        pytest.param("模糊".encode("gbk"), id="gbk"),  # read as latin-1: "Ä£ºý", stored
        # Read as latin-1, these hold C1 controls: refused, for that, with no word of the field.
        pytest.param("naïve \u2013 blurry".encode("cp1252"), id="cp1252"),
        pytest.param("ぼやけ".encode("shift_jis"), id="shift_jis"),
    ],
)
def test_a_multipart_reject_reason_that_is_not_utf8_is_refused_not_stored_as_latin1(
    reason: bytes, tmp_path: Path
) -> None:
    # Before, the framework read a multipart part that is not UTF-8 as latin-1, silently: the reason
    # the trainstore and the audit kept was not the one sent (a url-encoded one was already a 422).
    parts, task, client, token = one_task(tmp_path)

    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        content=_multipart({"decision": b"reject", "reject_reason": reason}),
        headers={"X-CSRF-Token": token, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 422, response.text
    assert "reject_reason" in response.json()["detail"]
    assert "UTF-8" in response.json()["detail"]
    assert parts.tasks.get(task.task_id).state == "claimed"
    assert parts.tasks.outbox(task.task_id) is None

    # A form that declares its charset is read in it: the reason is the one sent.
    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        content=_multipart({"decision": b"reject", "reject_reason": b"caf\xe9"}),
        headers={
            "X-CSRF-Token": token,
            "Content-Type": f"multipart/form-data; charset=latin-1; boundary={BOUNDARY}",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["resolved"]["reject_reason"] == "café"


def _tasks_with_an_unreadable_newest(parts: ConsoleParts) -> None:
    """Three flagged tasks; the newest no longer reads, so a list of one reads a second page after it."""
    with_flagged(parts, 3)
    with sqlite3.connect(parts.tasks.path) as db:
        newest = db.execute("SELECT task_id FROM tasks ORDER BY received_at DESC, task_id DESC").fetchone()[0]
        db.execute("UPDATE tasks SET pending_json = '{}' WHERE task_id = ?", (newest,))


def _plans_of_task_reads(tasks: TaskStore, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The query plans of the reads of the task table that the all-list (``state=None``) of one makes."""
    plan_of = closing(sqlite3.connect(tasks.path))
    statements = traced_statements(monkeypatch)

    listed = tasks.query(TaskFilter(state=None), limit=1)

    assert len(listed) == 1
    reads = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT *") and " tasks" in sql]
    assert len(reads) == 2, statements  # past the row that no longer reads: a second page, after its key
    with plan_of as db:
        return [[detail for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}")] for sql in reads]


def test_the_all_list_reads_through_an_index_not_the_whole_task_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the queue's "all" list scanned every task ever queued and sorted them all, for each page.
    parts = build_console(tmp_path)
    _tasks_with_an_unreadable_newest(parts)

    for plan in _plans_of_task_reads(parts.tasks, monkeypatch):
        assert "SCAN tasks" not in plan, plan  # a scan of the table itself, every row
        assert not any("TEMP B-TREE" in step for step in plan), plan  # a sort of every row
        used = r"tasks USING (COVERING )?INDEX tasks_by_arrival\b"
        assert any(re.search(used, step) for step in plan), plan


def test_a_task_table_made_before_the_arrival_index_is_given_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = build_console(tmp_path)
    _tasks_with_an_unreadable_newest(parts)
    with sqlite3.connect(parts.tasks.path) as db:  # as an earlier version left it
        db.execute("DROP INDEX IF EXISTS tasks_by_arrival")
    assert "tasks_by_arrival" not in _index_names(parts.tasks.path)

    reopened = TaskStore(parts.tasks.path)

    assert "tasks_by_arrival" in _index_names(parts.tasks.path)
    for plan in _plans_of_task_reads(reopened, monkeypatch):
        assert "SCAN tasks" not in plan, plan
