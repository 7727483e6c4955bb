"""Found in review 45 (second pass): what the console's sweeps and lists read, a second discard, and
stored text the pages showed as it was stored."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.console.tasks import TaskFilter, TaskStore, decision_event_id
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    decide_as_alice,
    decided,
    flagged_item,
    login,
    pending_envelope,
    spoil,
    task_table_before,
    traced_statements,
    use_cli_on,
    with_flagged,
)


def plan(db: sqlite3.Connection, sql: str) -> list[str]:
    return [detail for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def reads_of_tasks(statements: list[str]) -> list[str]:
    return [sql for sql in statements if sql.startswith("SELECT") and re.search(r"\bFROM tasks\b", sql)]


def test_a_withdrawal_sweep_reads_only_the_waiting_tasks_of_the_skus_with_withdrawals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, each sweep (every 30 s while the queue was not empty) read every waiting task's id and
    # SKU, to filter them by SKU in Python.
    parts = build_console(tmp_path)
    for index, sku_id in enumerate(["SKU-A", "SKU-B", "SKU-B"]):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index, sku_id=sku_id)))
    [withdrawn_task] = [task.task_id for task in parts.tasks.query() if task.sku_id == "SKU-A"]
    plan_of = closing(sqlite3.connect(parts.tasks.path))  # opened before the tracing: not traced
    statements = traced_statements(monkeypatch)

    assert parts.tasks.withdraw_photos({"SKU-A": {"p1"}, "SKU-GONE": {"p9"}}) == [withdrawn_task]

    reads = reads_of_tasks(statements)
    assert reads, statements
    with plan_of as db:
        for sql in reads:
            steps = [step for step in plan(db, sql) if " tasks " in f"{step} "]
            assert steps, (sql, plan(db, sql))
            for step in steps:
                by_sku = re.search(r"INDEX \w+ \(state=\? AND sku_id=\?\)", step)
                by_id = "(task_id=?)" in step
                assert by_sku or by_id, (sql, step)
    assert parts.tasks.count(TaskFilter(state="pending")) == 2, "the other SKU's tasks still wait"


def test_a_closed_list_of_one_sku_reads_that_skus_rows_in_decision_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, an approved list filtered by SKU walked every approved task (tasks_by_decision) to test
    # each one's SKU, and sorted them again by task id.
    parts = build_console(tmp_path)
    for index, sku_id in enumerate(["SKU-A", "SKU-B", "SKU-A"]):
        envelope = pending_envelope(flagged_item(parts.store, index, sku_id=sku_id))
        parts.tasks.add_pending(envelope)
        decide_as_alice(parts, envelope.event_id)
        parts.clock.advance(1.0)
    plan_of = closing(sqlite3.connect(parts.tasks.path))
    statements = traced_statements(monkeypatch)

    listed = parts.tasks.query(TaskFilter(state="approved", sku_id="SKU-A"), limit=1)

    assert [task.sku_id for task in listed] == ["SKU-A"]
    reads = [sql for sql in reads_of_tasks(statements) if sql.startswith("SELECT * FROM tasks WHERE state")]
    assert reads, statements
    with plan_of as db:
        for sql in reads:
            assert plan(db, sql) == ["SEARCH tasks USING INDEX tasks_by_decision_sku (state=? AND sku_id=?)"]
    assert [task.sku_id for task in parts.tasks.query(TaskFilter(state="approved", sku_id="SKU-A"))] == [
        "SKU-A",
        "SKU-A",
    ]


def test_the_look_for_expired_claims_before_each_read_reads_only_the_expired_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, each read of a task or the queue first read every claimed task to find an expired lease.
    parts = build_console(tmp_path)
    envelope = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(envelope)
    parts.tasks.claim(envelope.event_id, "alice", 60.0)
    plan_of = closing(sqlite3.connect(parts.tasks.path))
    statements = traced_statements(monkeypatch)

    parts.tasks.query()
    parts.tasks.counts()

    looks = [sql for sql in reads_of_tasks(statements) if "lease_expires_at <=" in sql]
    assert looks, statements
    with plan_of as db:
        for sql in looks:
            steps = [step for step in plan(db, sql) if "tasks" in step]
            assert steps and all("(state=? AND lease_expires_at<?)" in step for step in steps), (sql, steps)


def index_names(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


NEW_INDEXES = {"tasks_by_decision_sku", "tasks_by_lease"}


def test_a_task_table_from_before_gets_the_new_indexes(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    with closing(sqlite3.connect(parts.tasks.path)) as db:
        for name in NEW_INDEXES:
            db.execute(f"DROP INDEX {name}")
    assert not NEW_INDEXES & index_names(parts.tasks.path)
    TaskStore(parts.tasks.path)  # the next start
    assert index_names(parts.tasks.path) >= NEW_INDEXES
    # A table copied to allow a new state keeps every index (its old ones went with the dropped table).
    converted = task_table_before("accepted", tmp_path / "before.sqlite3", parts.tasks)
    assert NEW_INDEXES | {"tasks_by_state_sku", "tasks_by_arrival"} <= index_names(converted.path)


def test_a_second_discard_of_a_decision_says_it_was_discarded_already(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the second run said "has no decision to discard (approved)", as if it were never decided.
    parts = build_console(tmp_path)
    [spoiled] = decided(parts, 1)
    spoil(parts, "outbox", spoiled)
    use_cli_on(parts, monkeypatch)
    assert cli_main(["console", "discard", spoiled]) == 0
    capsys.readouterr()

    assert cli_main(["console", "discard", spoiled]) == 1

    err = capsys.readouterr().err
    assert f"the decision of task {spoiled} was discarded already (audit entry" in err
    assert "has no decision to discard" not in err
    assert [entry.action for entry in parts.tasks.audit(spoiled)].count("discard") == 1


OVERRIDE = "\u202e"


def _stored_with_an_override(parts: ConsoleParts, held: str, decided_id: str) -> None:
    """Text the pages show from outside the console (an event's reasons and gate checks, a reviewer's
    name another console or an import stored, the broker's refusal), each holding U+202E."""
    with closing(sqlite3.connect(parts.tasks.path)) as db, db:
        pending = json.loads(
            db.execute("SELECT pending_json FROM tasks WHERE task_id = ?", (held,)).fetchone()[0]
        )
        pending["checks"][0]["code"] = f"iou{OVERRIDE}woleb"
        pending["checks"][0]["message"] = f"IoU {OVERRIDE}0.5 < 0.9"
        db.execute(
            "UPDATE tasks SET pending_json = ?, reasons = ?, claimed_by = ? WHERE task_id = ?",
            (json.dumps(pending), json.dumps([f"drift{OVERRIDE}x"]), f"mallory{OVERRIDE}", held),
        )
        db.execute("UPDATE tasks SET decided_by = ? WHERE task_id = ?", (f"bob{OVERRIDE}", decided_id))
        db.execute("UPDATE audit SET reviewer = ? WHERE task_id = ?", (f"bob{OVERRIDE}", decided_id))
    parts.tasks.mark_refused(decision_event_id(decided_id), f"MessageSizeTooLarge{OVERRIDE}gnp.exe")


def test_the_pages_show_stored_names_reasons_checks_and_refusals_with_a_bidi_control_escaped(
    tmp_path: Path,
) -> None:
    # Before, only a reject reason and an audit detail were escaped: a reviewer's name, an audit entry's
    # reviewer, a gate check's code and message, the task's reasons and the broker's refusal were shown
    # as stored, and U+202E in any of them reordered the text after it.
    parts = with_flagged(build_console(tmp_path), 2)
    held, decided_id = [task.task_id for task in parts.tasks.query()]
    parts.tasks.claim(held, "mallory", 60.0)
    decide_as_alice(parts, decided_id)
    _stored_with_an_override(parts, held, decided_id)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client, "alice")

    pages = {
        "held item": client.get(f"/tasks/{held}"),
        "decided item": client.get(f"/tasks/{decided_id}"),
        "claimed queue": client.get("/", params={"state": "claimed"}),
        "approved queue": client.get("/", params={"state": "approved"}),
    }

    for name, page in pages.items():
        assert page.status_code == 200, name
        # A reason menu option's value is sent back as the filter as stored, and not shown.
        shown = re.sub(r' value="[^"]*"', "", page.text)
        assert OVERRIDE not in shown, name
    assert '<option value="drift\u202ex" >drift\\u202ex</option>' in pages["claimed queue"].text
    held_page, decided_page = pages["held item"].text, pages["decided item"].text
    assert "drift\\u202ex" in held_page and "(mallory\\u202e)" in held_page
    assert "iou\\u202ewoleb" in held_page and "IoU \\u202e0.5 &lt; 0.9" in held_page
    assert "by bob\\u202e" in decided_page and "MessageSizeTooLarge\\u202egnp.exe" in decided_page
    assert (
        "drift\\u202ex" in pages["claimed queue"].text and "(mallory\\u202e)" in pages["claimed queue"].text
    )
    assert "(bob\\u202e)" in pages["approved queue"].text
    assert "MessageSizeTooLarge\\u202egnp.exe" in pages["approved queue"].text
