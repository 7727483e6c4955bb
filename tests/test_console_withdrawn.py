"""A flagged item whose reference photo its owner withdrew leaves the console's queue as ``withdrawn``.

``skuforge ingest --withdraw-missing`` withdraws a photo and everything generated from it; the
console's sweep (``services/console/withdrawn.py``) closes the waiting tasks of such a photo, so no
reviewer spends time on them and they do not age in the backlog alert.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

from schemas.events import CorrectionPending, CorrectionResolved
from services.console.tasks import Task, TaskConflict, TaskFilter, TaskStore
from services.console.withdrawn import WithdrawalSweep
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    flagged_item,
    login,
    pending_envelope,
    record_listings,
    task_table_before,
)

PHOTOS = [("SKU-A", "p1"), ("SKU-A", "p1"), ("SKU-A", "p2"), ("SKU-A", "p1"), ("SKU-B", "p1")]


def of_photo(pending: CorrectionPending, photo_id: str) -> CorrectionPending:
    generated = pending.matted.generated.model_copy(update={"reference_photo_id": photo_id})
    return pending.model_copy(update={"matted": pending.matted.model_copy(update={"generated": generated})})


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    """One task per entry of PHOTOS, oldest first."""
    parts = build_console(tmp_path, lease_s=60.0)
    for index, (sku_id, photo_id) in enumerate(PHOTOS):
        pending = of_photo(flagged_item(parts.store, index, sku_id=sku_id), photo_id)
        parts.tasks.add_pending(pending_envelope(pending))
        parts.clock.advance(1.0)
    return parts


def task_ids(tasks: TaskStore) -> list[str]:
    """Every task id, in PHOTOS order."""
    return [task.task_id for task in sorted(tasks.query(TaskFilter(state=None)), key=lambda t: t.received_at)]


def state_list(tasks: TaskStore) -> list[str]:
    return [tasks.get(task_id).state for task_id in task_ids(tasks)]


def sweep_for(parts: ConsoleParts) -> tuple[WithdrawalSweep, Withdrawals]:
    withdrawals = Withdrawals(ManifestStore(parts.store, "trainstore"))
    return WithdrawalSweep(parts.tasks, withdrawals, parts.console.metrics), withdrawals


def test_the_sweep_closes_the_waiting_tasks_of_a_withdrawn_photo_only(parts: ConsoleParts) -> None:
    ids = task_ids(parts.tasks)
    held = parts.tasks.claim(ids[1], "alice", 60.0)
    parts.tasks.claim(ids[3], "bob", 60.0)
    parts.tasks.decide(ids[3], "bob", "reject", _reject)
    sweep, withdrawals = sweep_for(parts)
    assert sweep.sweep() == []  # nothing withdrawn yet
    withdrawals.withdraw("SKU-A", "soda can", ["p1"], by="test")

    closed = sweep.sweep()

    # SKU-A's p1 tasks that waited (pending, and alice's claim) close; the decided one, SKU-A's p2
    # and SKU-B's p1 (another SKU's photo of the same name) stay as they were.
    assert sorted(closed) == sorted([ids[0], ids[1]])
    assert state_list(parts.tasks) == ["withdrawn", "withdrawn", "pending", "rejected", "pending"]
    assert sweep.sweep() == []  # run again: nothing more
    assert parts.tasks.counts() == {
        "pending": 2,
        "claimed": 0,
        "approved": 0,
        "rejected": 1,
        "withdrawn": 2,
        "accepted": 0,
    }
    assert [task.task_id for task in parts.tasks.query()] == [ids[2], ids[4]]  # the queue
    # No decision event for them: the trainstore withdrew the items itself.
    assert [event.task_id for event in parts.tasks.unpublished()] == [ids[3]]
    audit = parts.tasks.audit(ids[1])[-1]
    assert (audit.action, audit.previous_state, audit.new_state) == ("withdrawn", "claimed", "withdrawn")
    assert "p1 withdrawn by its owner while alice held it" in audit.detail
    # The reviewer who held one learns why it is gone, and cannot decide or claim it again.
    with pytest.raises(TaskConflict, match="reference photo was withdrawn by its owner"):
        parts.tasks.decide(held.task_id, "alice", "reject", _reject)
    with pytest.raises(TaskConflict, match="reference photo was withdrawn"):
        parts.tasks.claim(ids[0], "alice", 60.0)
    assert (
        "skuforge_console_tasks_withdrawn_total 2.0"
        in generate_latest(parts.console.metrics.registry).decode()
    )


def test_no_listing_of_the_store_while_no_task_waits(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep, withdrawals = sweep_for(parts)
    withdrawals.withdraw("SKU-A", "soda can", ["p1", "p2"], by="test")
    withdrawals.withdraw("SKU-B", "soda can", ["p1"], by="test")
    assert withdrawals.by_sku() == {"SKU-A": {"p1", "p2"}, "SKU-B": {"p1"}}
    assert len(sweep.sweep()) == 5

    listed = record_listings(parts, monkeypatch)
    assert sweep.sweep() == []
    assert listed == []  # every task is closed: the sweep did not read the store


def test_the_pages_show_a_withdrawn_task_and_the_queue_filters_them(parts: ConsoleParts) -> None:
    sweep, withdrawals = sweep_for(parts)
    withdrawals.withdraw("SKU-B", "soda can", ["p1"], by="test")
    (closed,) = sweep.sweep()
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)

    page = client.get(f"/tasks/{closed}")
    assert page.status_code == 200
    assert "its owner withdrew the reference photo" in page.text
    assert 'id="claim"' not in page.text
    listed = client.get("/api/tasks", params={"state": "withdrawn"})
    assert listed.status_code == 200, listed.text
    assert [task["task_id"] for task in listed.json()["tasks"]] == [closed]
    assert listed.json()["counts"]["withdrawn"] == 1
    queue = client.get("/", params={"state": "withdrawn"})
    assert queue.status_code == 200 and closed[:8] in queue.text


def test_a_task_table_from_before_the_withdrawn_state_is_migrated_with_its_rows(
    tmp_path: Path, parts: ConsoleParts
) -> None:
    old = tmp_path / "old.sqlite3"
    tasks = task_table_before("withdrawn", old, parts.tasks, oldest=1)

    assert [task.state for task in tasks.query(TaskFilter(state=None))] == ["pending"]
    schema = sqlite3.connect(old).execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    assert {"tasks_by_state", "tasks_by_item"} <= {row[0] for row in schema}
    withdrawals = Withdrawals(ManifestStore(parts.store, "trainstore"))
    (row,) = tasks.query()
    withdrawals.withdraw(row.sku_id, "soda can", [row.pending.matted.generated.reference_photo_id], by="test")
    assert WithdrawalSweep(tasks, withdrawals).sweep() == [row.task_id]
    assert TaskStore(old).get(row.task_id).state == "withdrawn"  # opened again: no second copy


def _reject(task: Task, at: float) -> CorrectionResolved:
    return CorrectionResolved(
        pending=task.pending,
        decision="reject",
        reject_reason="not_the_product",
        reviewer="x",
        decided_at=datetime.fromtimestamp(at, UTC),
    )
