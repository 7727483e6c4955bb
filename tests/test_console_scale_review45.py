"""Found in review 45: the queue's state tabs and reason menu, and each /metrics scrape, read every task.

The counts by state and by decision and the reason codes are kept in small tables that SQLite
triggers maintain on every write of ``tasks``; these tests show they are read instead of the task
table, and that they always equal what a full count of the table says.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

import services.console.pages as pages_module
from schemas.envelope import Envelope
from services.console.tasks import _SCHEMA, TaskFilter, TaskStore
from tests.support.console import (
    accepted_envelope,
    app_for,
    assert_kept,
    build_console,
    decide_as_alice,
    flagged_item,
    full_counts,
    login,
    pending_envelope,
    record_as,
    task_table_before,
    traced_statements,
    with_flagged,
)


def copy_of(envelope: Envelope[Any], reasons: list[str], after_s: float) -> Envelope[Any]:
    """The gate's copy of ``envelope`` produced ``after_s`` later, with other reasons (a replay)."""
    payload = envelope.payload.model_copy(update={"reasons": reasons})
    produced_at = envelope.produced_at + timedelta(seconds=after_s)
    return envelope.model_copy(update={"payload": payload, "produced_at": produced_at})


def test_the_kept_counts_equal_a_full_count_through_every_change_of_a_tasks_state(tmp_path: Path) -> None:
    parts = build_console(tmp_path, lease_s=60.0)
    tasks, clock = parts.tasks, parts.clock
    flags = [pending_envelope(flagged_item(parts.store, index)) for index in range(7)]
    other_sku = pending_envelope(flagged_item(parts.store, 7, sku_id="SKU-00002"))
    assert_kept(tasks, clock())
    for envelope in [*flags, other_sku]:
        tasks.add_pending(envelope)
        clock.advance(1.0)
    tasks.add_pending(flags[0])  # a redelivery: ignored
    assert_kept(tasks, clock())
    assert tasks.counts()["pending"] == 8

    # A replay with other reasons, then another taking the new one back: the menu follows the tasks.
    tasks.add_pending(copy_of(flags[1], ["only_this_one"], 1.0))
    assert "only_this_one" in tasks.reasons()
    assert_kept(tasks, clock())
    tasks.add_pending(copy_of(flags[1], ["iou_below_threshold"], 2.0))
    assert "only_this_one" not in tasks.reasons()
    assert_kept(tasks, clock())

    # Claims, a release, claim-next, decisions of each kind.
    tasks.claim(flags[2].event_id, "alice", 60.0)
    assert_kept(tasks, clock())
    tasks.release(flags[2].event_id, "alice")
    assert_kept(tasks, clock())
    assert tasks.claim_next("bob", 60.0) is not None
    assert_kept(tasks, clock())
    decide_as_alice(parts, flags[2].event_id)
    decide_as_alice(parts, flags[3].event_id, "reject", "bad_render")
    assert_kept(tasks, clock())
    assert tasks.decision_counts() == {"approve_expected": 1, "reject": 1}

    # A lease runs out: counted pending at once (nothing written: counts is read-only), then swept.
    tasks.claim(flags[4].event_id, "carol", 60.0)
    clock.advance(61.0)
    assert tasks.counts()["claimed"] == 0
    assert_kept(tasks, clock())
    assert tasks.expire_leases() == 2  # bob's claim-next and carol's
    assert_kept(tasks, clock())

    # The gate accepts a waiting item on a replay; a person rejects it all the same.
    tasks.close_accepted(accepted_envelope(flags[4], produced_at=flags[4].produced_at + timedelta(minutes=1)))
    assert_kept(tasks, clock())
    record_as(parts, "alice", flags[4].event_id, "reject", "bad_render")
    assert_kept(tasks, clock())
    # Accepted, then flagged again later: waiting again.
    tasks.close_accepted(accepted_envelope(flags[5], produced_at=flags[5].produced_at + timedelta(minutes=1)))
    assert_kept(tasks, clock())
    tasks.add_pending(copy_of(flags[5], ["iou_below_threshold"], 120.0))
    assert tasks.get(flags[5].event_id).state == "pending"
    assert_kept(tasks, clock())
    # An acceptance before the flag arrives: the task is written accepted.
    late = pending_envelope(flagged_item(parts.store, 8))
    tasks.close_accepted(accepted_envelope(late, produced_at=late.produced_at + timedelta(minutes=1)))
    tasks.add_pending(late)
    assert tasks.get(late.event_id).state == "accepted"
    assert_kept(tasks, clock())

    # A photo withdrawn: its SKU's waiting tasks close, one of them held.
    tasks.claim(flags[6].event_id, "dave", 60.0)
    closed = tasks.withdraw_photos({"SKU-00001": {"p1"}})
    assert flags[6].event_id in closed
    assert_kept(tasks, clock())
    assert tasks.counts() == {
        "pending": 1,  # the other SKU's
        "claimed": 0,
        "approved": 1,
        "rejected": 2,
        "withdrawn": 4,
        "accepted": 1,
    }


def test_rows_written_by_hand_and_deleted_are_counted_too(tmp_path: Path) -> None:
    # The triggers are in the table itself, so any writer keeps the counts: another process, an older
    # version, an operator in the sqlite3 shell.
    parts = with_flagged(build_console(tmp_path), 3)
    with closing(sqlite3.connect(parts.tasks.path)) as db:
        db.execute("UPDATE tasks SET state = 'approved', decision = 'approve_predicted' WHERE rowid = 1")
        db.execute("UPDATE tasks SET decision = 'approve_edited' WHERE rowid = 1")  # the decision alone
        db.execute("UPDATE tasks SET reasons = '[\"by_hand\"]' WHERE rowid = 2")
        db.execute("DELETE FROM tasks WHERE rowid = 3")
        db.commit()
    assert_kept(parts.tasks, parts.clock())
    assert parts.tasks.reasons() == ["by_hand", "iou_below_threshold"]
    assert parts.tasks.decision_counts() == {"approve_edited": 1}


def test_a_table_made_before_the_kept_counts_is_counted_when_the_console_opens_it(tmp_path: Path) -> None:
    parts = with_flagged(build_console(tmp_path), 4)
    decide_as_alice(parts, parts.tasks.query(limit=1)[0].task_id, "approve_predicted")
    parts.tasks.claim(parts.tasks.query(limit=1)[0].task_id, "bob", 60.0)
    old = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(old)) as db:  # the table as the version before kept no counts
        db.executescript(_SCHEMA)
        db.execute("ATTACH DATABASE ? AS current", (str(parts.tasks.path),))
        columns = ", ".join(row[1] for row in db.execute("PRAGMA current.table_info(tasks)"))
        db.execute(f"INSERT INTO tasks ({columns}) SELECT {columns} FROM current.tasks")
        db.commit()
    reopened = TaskStore(old, clock=parts.clock)
    assert reopened.counts() == parts.tasks.counts() == full_counts(old, parts.clock())
    assert reopened.counts()["claimed"] == 1
    assert_kept(reopened, parts.clock())
    reopened.add_pending(pending_envelope(flagged_item(parts.store, 9)))
    assert reopened.counts()["pending"] == 3
    assert_kept(reopened, parts.clock())


def test_a_table_converted_to_allow_a_new_state_keeps_counting(tmp_path: Path) -> None:
    # The conversion copies the table into a new one, and the old one's triggers go with it.
    parts = with_flagged(build_console(tmp_path), 3)
    converted = task_table_before("accepted", tmp_path / "before.sqlite3", parts.tasks)
    assert_kept(converted, parts.clock())
    converted.add_pending(pending_envelope(flagged_item(parts.store, 5)))
    assert converted.counts()["pending"] == 4
    assert_kept(converted, parts.clock())


def plan(db: sqlite3.Connection, sql: str) -> list[str]:
    return [detail for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def test_the_queue_page_and_a_scrape_read_no_task_beyond_their_list_and_the_held_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the state tabs (and every scrape) grouped every row of the task table, the reason menu
    # read every task's reasons through json_each, and the decision counter every decided task.
    parts = with_flagged(build_console(tmp_path), 3)
    decide_as_alice(parts, parts.tasks.query(limit=1)[0].task_id)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    plan_of = closing(sqlite3.connect(parts.tasks.path))  # opened before the tracing: not traced
    statements = traced_statements(monkeypatch)

    assert client.get("/").status_code == 200
    assert "skuforge_console_tasks{" in generate_latest(parts.console.metrics.registry).decode()

    reads = [sql for sql in statements if sql.startswith(("SELECT", "WITH"))]
    assert reads, statements
    with plan_of as db:
        for sql in reads:
            steps = plan(db, sql)
            assert not [step for step in steps if step.startswith("SCAN tasks")], (sql, steps)
            if any(step.startswith(("SEARCH tasks ", "SCAN tasks")) for step in steps):
                # Grouping or deduplicating rows of tasks reads them all (the kept tables are small).
                assert not [step for step in steps if "TEMP B-TREE FOR" in step and "ORDER BY" not in step], (
                    sql,
                    steps,
                )


def test_a_count_by_state_and_sku_reads_only_that_skus_rows_in_that_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, it walked every row in the state (tasks_by_decision) to test each one's SKU.
    parts = with_flagged(build_console(tmp_path), 2)
    monkeypatch.setattr(pages_module, "QUEUE_PAGE_LIMIT", 1)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    plan_of = closing(sqlite3.connect(parts.tasks.path))
    statements = traced_statements(monkeypatch)

    page = client.get("/?state=pending&sku=SKU-00001")

    assert "showing 1 of 2" in page.text
    counted = [sql for sql in statements if sql.startswith("SELECT COUNT(*) FROM tasks WHERE state")]
    assert counted, statements
    with plan_of as db:
        for sql in counted:
            # Either index that leads with (state, sku_id) reads that SKU's rows alone: both are as wide.
            only_the_skus = r"SEARCH tasks USING COVERING INDEX tasks_by_(state|decision)_sku"
            only_the_skus += r" \(state=\? AND sku_id=\?\)"
            steps = plan(db, sql)
            assert len(steps) == 1 and re.fullmatch(only_the_skus, steps[0]), steps
    assert parts.tasks.count(TaskFilter(state="pending", sku_id="SKU-00002")) == 0
