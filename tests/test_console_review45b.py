"""Found in review 45 (second pass): what the console's sweeps and lists read, a second discard, and
stored text the pages showed as it was stored."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from services.console.tasks import TaskFilter, TaskStore
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    build_console,
    decide_as_alice,
    decided,
    flagged_item,
    pending_envelope,
    spoil,
    task_table_before,
    traced_statements,
    use_cli_on,
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
