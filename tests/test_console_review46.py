"""Found in review 46: the kept counts looked for by their triggers' names alone and only on open."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from services.console.tasks import TaskStore
from tests.support.console import (
    assert_kept,
    build_console,
    flagged_item,
    pending_envelope,
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
