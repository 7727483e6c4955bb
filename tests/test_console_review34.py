"""The console after review 34: a decision is judged, and dated, at the time it holds the task table, so
one whose lease ran out while it waited for the table is refused; the queue dates a closed item by when
it closed; an IoU just under its threshold is not shown as the threshold."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from schemas.events import GateCheck
from services.console.decisions import record_decision
from services.console.tasks import TaskConflict
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    decide_as_alice,
    flagged_item,
    flagged_parts_fixture,
    login,
    pending_envelope,
    table_is_busy,
    with_flagged,
)

parts = flagged_parts_fixture(1)


class BusyTableClock:
    """A clock that reads ``idle`` while nobody writes to the task table at ``path`` and ``busy`` while a
    write transaction holds it: the time moves on while a decision waits for the table."""

    def __init__(self, path: Path, *, idle: float, busy: float) -> None:
        self.path = path
        self.idle = idle
        self.busy = busy

    def __call__(self) -> float:
        return self.busy if table_is_busy(self.path) else self.idle


def held_by_bob(parts: ConsoleParts) -> tuple[str, float]:
    """The task bob holds, and when his lease runs out."""
    (task,) = parts.tasks.query()
    held = parts.tasks.claim(task.task_id, "bob", 60.0)
    assert held.lease_expires_at is not None
    return task.task_id, held.lease_expires_at


def bob_approves(parts: ConsoleParts, task_id: str) -> None:
    record_decision(
        parts.tasks,
        parts.store,
        task_id=task_id,
        reviewer="bob",
        decision="approve_expected",
        reject_reason=None,
        mask_bytes=None,
        max_pixels=10_000_000,
        max_bytes=10_000_000,
    )


def test_a_decision_whose_lease_ran_out_while_it_waited_for_the_table_is_refused(parts: ConsoleParts) -> None:
    """``decide`` read the clock before it held the table: bob's lease, over by the time his decision held
    the table (a claim, the intake or the relay writing meanwhile), still let it through, recorded on a
    lease that had run out (a claim then would have taken the task, as ``claim`` judges it in the table)."""
    task_id, lease_end = held_by_bob(parts)
    parts.tasks.clock = BusyTableClock(parts.tasks.path, idle=lease_end - 0.5, busy=lease_end + 0.5)

    with pytest.raises(TaskConflict, match="expired"):
        bob_approves(parts, task_id)

    assert parts.tasks.outbox(task_id) is None
    assert [entry.action for entry in parts.tasks.audit(task_id)] == ["intake", "claim"]


def test_a_decision_is_dated_when_it_holds_the_table(parts: ConsoleParts) -> None:
    """Its decided_at (in the task, the audit trail and the event) was the time before it waited."""
    task_id, lease_end = held_by_bob(parts)
    parts.tasks.clock = BusyTableClock(parts.tasks.path, idle=lease_end - 20.0, busy=lease_end - 10.0)

    bob_approves(parts, task_id)

    event = parts.tasks.outbox(task_id)
    assert event is not None
    assert event.created_at == lease_end - 10.0
    assert event.payload.decided_at == datetime.fromtimestamp(lease_end - 10.0, UTC)
    parts.tasks.clock = lambda: lease_end - 10.0
    assert parts.tasks.get(task_id).decided_at == lease_end - 10.0
    assert parts.tasks.audit(task_id)[-1].at == lease_end - 10.0


def test_the_queue_dates_a_closed_item_by_when_it_closed(tmp_path: Path) -> None:
    """A decided list is ordered by decision time, newest first, but its first column, "waiting since",
    gave each item's age since it arrived: an item decided a minute ago after waiting ten read "11 min"
    waiting, as if nobody had decided it, and the list looked out of order."""
    parts = with_flagged(build_console(tmp_path), 2)
    waiting, decided = parts.tasks.query()
    parts.clock.advance(600.0)
    decide_as_alice(parts, decided.task_id)
    parts.clock.advance(60.0)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)

    closed = client.get("/", params={"state": "approved"})
    every = client.get("/", params={"state": "all"})

    assert closed.status_code == every.status_code == 200
    assert _first_cell(closed.text, decided.task_id) == "closed 1 min ago"
    assert _first_cell(every.text, decided.task_id) == "closed 1 min ago"
    assert _first_cell(every.text, waiting.task_id) == "waiting 11 min"


def _first_cell(page: str, task_id: str) -> str:
    """The text of the first cell of the queue row of ``task_id``."""
    row = re.search(rf'<tr data-task-id="{task_id}">\s*<td>([^<]*)</td>', page)
    assert row, page
    return row.group(1)


def test_an_iou_just_under_its_threshold_is_not_shown_as_the_threshold(tmp_path: Path) -> None:
    """The queue's IoU column and the item page's IoU showed 3 decimals: an item flagged for an IoU of
    0.8996 under a threshold of 0.9 read "0.900" beside its reason iou_below_threshold (the item page's
    check table, fixed before, said 0.8996 below it)."""
    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    just_under = GateCheck(code="iou_below_threshold", passed=False, value=0.8996, threshold=0.9)
    parts.tasks.add_pending(
        pending_envelope(pending.model_copy(update={"iou": 0.8996, "checks": [just_under]}))
    )
    far_under = flagged_item(parts.store, 1)  # its own IoU, far under the threshold: 3 decimals
    parts.tasks.add_pending(pending_envelope(far_under))
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    flagged, other = parts.tasks.query()

    queue = client.get("/")
    item = client.get(f"/tasks/{flagged.task_id}")

    assert queue.status_code == item.status_code == 200
    assert "<td>0.8996</td>" in queue.text and "0.900<" not in queue.text, queue.text
    assert '<dd id="iou">0.8996</dd>' in item.text, item.text
    assert f"<td>{other.iou:.3f}</td>" in queue.text
