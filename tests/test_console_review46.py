"""Found in review 46: the kept counts looked for by their triggers' names alone and only on open; the
task table's indexes found by a string prefix, kept in an older definition, and sorting ties."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from services.console.tasks import TaskFilter, TaskStore
from tests.support.console import (
    ConsoleParts,
    assert_kept,
    build_console,
    decide_as_alice,
    flagged_item,
    pending_envelope,
    task_table_before,
    traced_statements,
    with_flagged,
)

# Hand edits of the kept counts that leave every trigger's name in place.
HAND_EDITS = {
    "count table dropped": "DROP TABLE task_counts",
    "reason table dropped": "DROP TABLE task_reasons",
    "trigger redefined": "DROP TRIGGER tasks_counted_in;"
    " CREATE TRIGGER tasks_counted_in AFTER INSERT ON tasks BEGIN SELECT 1; END",
}


@pytest.mark.parametrize("edit", HAND_EDITS.values(), ids=HAND_EDITS.keys())
def test_kept_counts_edited_by_hand_are_made_whole_again_by_the_running_console_and_on_open(
    edit: str, tmp_path: Path
) -> None:
    # Before, with a count table dropped and its triggers left, every write of a task failed ("no such
    # table: task_counts"), restarts included: the open looked only for the triggers' names.
    parts = with_flagged(build_console(tmp_path), 3)
    with closing(sqlite3.connect(parts.tasks.path)) as db:
        db.executescript(edit)

    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 3)))

    assert parts.tasks.counts()["pending"] == 4
    assert_kept(parts.tasks, parts.clock())
    with closing(sqlite3.connect(parts.tasks.path)) as db:
        db.executescript(edit)
    reopened = TaskStore(parts.tasks.path, clock=parts.clock)  # the next start
    reopened.add_pending(pending_envelope(flagged_item(parts.store, 4)))
    assert reopened.counts()["pending"] == 5
    assert_kept(reopened, parts.clock())


def copy_as_an_older_version_does(path: Path) -> None:
    """Copy the task table into a new one and queue a task as a version before the kept counts does
    (``_allow_every_state`` before them): the old table's triggers go with it."""
    with closing(sqlite3.connect(path)) as db:
        (table,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks'").fetchone()
        # The name is quoted once the table was renamed.
        db.execute(re.sub(r'^CREATE TABLE "?tasks"?', "CREATE TABLE tasks_copy", table))
        db.execute("INSERT INTO tasks_copy SELECT * FROM tasks")
        db.execute("DROP TABLE tasks")
        db.execute("ALTER TABLE tasks_copy RENAME TO tasks")
        db.execute(
            "INSERT INTO tasks SELECT lower(hex(randomblob(16))), sku_id, item_id, trace_id, iou, reasons,"
            " pending_json, 'pending', received_at, NULL, NULL, NULL, NULL, NULL, NULL, produced_at"
            " FROM tasks LIMIT 1"
        )
        db.commit()
        triggers = db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    assert triggers == []


def test_triggers_dropped_under_a_running_console_are_made_again_before_it_counts_or_writes(
    tmp_path: Path,
) -> None:
    # Before, the running console read the counts of before the copy (the state tabs, /metrics) and
    # counted none of the writes after it, until it was restarted.
    parts = with_flagged(build_console(tmp_path), 3)
    assert parts.tasks.counts()["pending"] == 3

    copy_as_an_older_version_does(parts.tasks.path)

    assert parts.tasks.counts()["pending"] == 4
    assert_kept(parts.tasks, parts.clock())
    copy_as_an_older_version_does(parts.tasks.path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 5)))
    assert parts.tasks.counts()["pending"] == 6
    assert_kept(parts.tasks, parts.clock())


def plan(db: sqlite3.Connection, sql: str) -> list[str]:
    return [detail for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def index_columns(path: Path, name: str) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[2] for row in db.execute(f"PRAGMA index_info({name})")]


def lists_read_in_index_order(parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiting and closed lists (and claim-next) read their rows in order from an index, sorting none."""
    plan_of = closing(sqlite3.connect(parts.tasks.path))  # opened before the tracing: not traced
    statements = traced_statements(monkeypatch)

    assert len(parts.tasks.query(limit=2)) == 2
    assert len(parts.tasks.query(TaskFilter(state="pending", sku_id="SKU-00001"), limit=2)) == 2
    assert parts.tasks.claim_next("bob", 60.0) is not None  # one's own claim first, then a pending one
    assert len(parts.tasks.query(TaskFilter(state="claimed"))) == 1
    assert len(parts.tasks.query(TaskFilter(state="approved"), limit=1)) == 1

    reads = [sql for sql in statements if sql.startswith("SELECT * FROM tasks WHERE state")]
    assert len(reads) >= 6, statements
    with plan_of as db:
        for sql in reads:
            steps = plan(db, sql)
            assert not [step for step in steps if "TEMP B-TREE" in step], (sql, steps)


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    """Four tasks pending and one approved, two of them queued at the same time (a tie to break)."""
    parts = build_console(tmp_path)
    for index in range(5):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index)))
        parts.clock.advance(1.0 if index != 1 else 0.0)
    decide_as_alice(parts, parts.tasks.query(limit=1)[0].task_id)
    return parts


def test_the_waiting_and_closed_lists_sort_no_rows(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the indexes ended at the time (received_at, decided_at): each page sorted every task of its
    # state to order the ties by task id ("USE TEMP B-TREE FOR RIGHT PART OF ORDER BY").
    lists_read_in_index_order(parts, monkeypatch)


def test_an_index_of_an_older_definition_is_made_again_as_defined_today(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, CREATE INDEX IF NOT EXISTS kept a table's index of the name as an older version made it.
    with closing(sqlite3.connect(parts.tasks.path)) as db:
        for name, columns in OLDER_INDEXES.items():
            db.executescript(f"DROP INDEX {name}; CREATE INDEX {name} ON tasks ({columns})")

    reopened = TaskStore(parts.tasks.path, clock=parts.clock)

    assert index_columns(reopened.path, "tasks_by_state") == ["state", "received_at", "task_id"]
    assert index_columns(reopened.path, "tasks_by_decision") == ["state", "decided_at", "task_id"]
    assert index_columns(reopened.path, "tasks_by_state_sku") == ["state", "sku_id", "received_at", "task_id"]
    parts.tasks = reopened
    lists_read_in_index_order(parts, monkeypatch)


# The indexes as review 45 left them, and one of today's columns in another order.
OLDER_INDEXES = {
    "tasks_by_state": "state, received_at",
    "tasks_by_decision": "state, decided_at",
    "tasks_by_state_sku": "state, sku_id, received_at",
    "tasks_by_arrival": "task_id, received_at",
}


def test_a_table_copied_to_allow_a_new_state_keeps_its_owners_own_indexes_and_triggers(
    parts: ConsoleParts, tmp_path: Path
) -> None:
    # Before, the copy made again only the indexes found by a name prefix in _SCHEMA: an index or trigger
    # the owner made on the task table went with the old table, silently.
    own = (
        "CREATE INDEX tasks_by_state_of_mine ON tasks (sku_id, iou);"  # our indexes' prefix, not one of ours
        " DROP INDEX IF EXISTS tasks_by_state; CREATE INDEX tasks_by_state ON tasks (state);"  # ours, older
        " CREATE TABLE arrivals (task_id TEXT); CREATE TRIGGER tasks_arrivals AFTER INSERT ON tasks"
        " BEGIN INSERT INTO arrivals VALUES (NEW.task_id); END"
    )

    converted = task_table_before("accepted", tmp_path / "before.sqlite3", parts.tasks, then=own)

    assert index_columns(converted.path, "tasks_by_state_of_mine") == ["sku_id", "iou"]
    assert index_columns(converted.path, "tasks_by_state") == ["state", "received_at", "task_id"]
    envelope = pending_envelope(flagged_item(parts.store, 9))
    converted.add_pending(envelope)
    with closing(sqlite3.connect(converted.path)) as db:
        assert db.execute("SELECT task_id FROM arrivals").fetchall() == [(envelope.event_id,)]
    assert_kept(converted, parts.clock())


def test_a_task_whose_reasons_do_not_parse_leaves_the_queue_filtered_by_reason_readable(
    tmp_path: Path,
) -> None:
    # Before, json_each of the damaged column failed the whole statement ("malformed JSON"): every list
    # and count filtered by a reason answered an error, for every reviewer, until the row was mended.
    parts = with_flagged(build_console(tmp_path), 3)
    damaged, *others = [task.task_id for task in parts.tasks.query()]
    with closing(sqlite3.connect(parts.tasks.path)) as db:
        db.execute("UPDATE tasks SET reasons = 'iou_below_threshold' WHERE task_id = ?", (damaged,))
        db.commit()

    by_reason = TaskFilter(reason="iou_below_threshold")
    assert [task.task_id for task in parts.tasks.query(by_reason)] == others
    assert parts.tasks.count(by_reason) == 2
    assert parts.tasks.claim_next("alice", 60.0, by_reason) is not None
    assert [task.task_id for task in parts.tasks.query(TaskFilter(state=None))] == others[::-1]  # left out
