"""A flagged item the gate accepts when it is replayed (after a threshold change) leaves the console's
queue as ``accepted``: the trainstore stores it, so no reviewer should spend time on it.

The rules follow the trainstore's (``services/trainstore/stage.py``): a reviewer's decision stands
against the gate's, so a decided task stays decided; among the gate's own verdicts of a render the
newest counts, so an acceptance older than the copy a task shows leaves it open, and a newer flag
opens a task the gate had accepted again.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from schemas.envelope import Envelope
from schemas.events import ImageMatted
from services.console.decisions import record_decision
from services.console.labelstudio import import_annotations
from services.console.tasks import TaskConflict, TaskFilter, TaskStore
from tests.support.console import (
    ConsoleParts,
    accepted_envelope,
    app_for,
    decide_as_alice,
    flagged_item,
    flagged_parts_fixture,
    login,
    pending_envelope,
    task_table_before,
)

parts = flagged_parts_fixture(0)


def flag(parts: ConsoleParts, index: int) -> Envelope[Any]:
    """Queue flagged item ``index``; returns the gate's correction.pending event."""
    envelope = pending_envelope(flagged_item(parts.store, index))
    parts.tasks.add_pending(envelope)
    parts.clock.advance(1.0)
    return envelope


def later(envelope: Envelope[Any], seconds: float = 60.0) -> Any:
    return envelope.produced_at + timedelta(seconds=seconds)


def rerendered(parts: ConsoleParts, envelope: Envelope[Any]) -> ImageMatted:
    """The item ``envelope`` flags rendered again under its item id (a changed scene library): flagged
    item 1's pixels, which no one has judged."""
    other = flagged_item(parts.store, 1).matted
    generated = other.generated.model_copy(update={"item_id": envelope.payload.matted.generated.item_id})
    assert generated.image.sha256 != envelope.payload.matted.generated.image.sha256
    return other.model_copy(update={"generated": generated})


def test_a_replayed_acceptance_closes_the_waiting_task_of_the_item_held_or_not(parts: ConsoleParts) -> None:
    waiting, held, other = flag(parts, 0), flag(parts, 1), flag(parts, 2)
    parts.tasks.claim(held.event_id, "alice", 60.0)

    for envelope in (waiting, held):
        closed = parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope)))
        assert closed == [envelope.event_id]

    assert [parts.tasks.get(e.event_id).state for e in (waiting, held, other)] == [
        "accepted",
        "accepted",
        "pending",
    ]
    task = parts.tasks.get(held.event_id)
    assert task.decided_by == "gate" and task.decision is None and task.lease_expires_at is None
    (entry,) = [e for e in parts.tasks.audit(held.event_id) if e.action == "gate_accepted"]
    assert (entry.previous_state, entry.new_state) == ("claimed", "accepted")
    assert "alice" in entry.detail
    assert parts.tasks.counts()["accepted"] == 2
    assert [t.task_id for t in parts.tasks.query()] == [other.event_id]  # the queue: what waits
    # The reviewer who held it finds it closed, and why, when they save; nobody can claim it again.
    with pytest.raises(TaskConflict, match="the gate accepted"):
        decide_as_alice(parts, held.event_id)
    with pytest.raises(TaskConflict, match="the gate accepted"):
        parts.tasks.claim(waiting.event_id, "bob", 60.0)
    assert parts.tasks.unpublished_count() == 0  # no decision event: the gate's event is the verdict


def test_the_reviewer_holding_it_gets_a_409_with_the_reason_and_the_item_page_says_so(
    parts: ConsoleParts,
) -> None:
    held = flag(parts, 0)
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    assert (
        client.post(f"/api/tasks/{held.event_id}/claim", headers={"X-CSRF-Token": token}).status_code == 200
    )
    parts.tasks.close_accepted(accepted_envelope(held, produced_at=later(held)))

    saved = client.post(
        f"/api/tasks/{held.event_id}/decision",
        data={"decision": "approve_expected"},
        headers={"X-CSRF-Token": token},
    )
    assert saved.status_code == 409 and "the gate accepted" in saved.json()["detail"]
    page = client.get(f"/tasks/{held.event_id}")
    assert page.status_code == 200 and "accepted by the gate" in page.text
    listed = client.get("/api/tasks", params={"state": "accepted"})
    assert listed.status_code == 200, listed.text
    assert [t["task_id"] for t in listed.json()["tasks"]] == [held.event_id]


def test_a_decided_task_stays_as_the_reviewer_decided(parts: ConsoleParts) -> None:
    approved, rejected = flag(parts, 0), flag(parts, 1)
    decide_as_alice(parts, approved.event_id)
    decide_as_alice(parts, rejected.event_id, "reject", "wrong_product")

    for envelope in (approved, rejected):
        assert parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope))) == []

    assert [parts.tasks.get(e.event_id).state for e in (approved, rejected)] == ["approved", "rejected"]


def test_an_acceptance_older_than_the_flag_the_task_shows_leaves_it_open(parts: ConsoleParts) -> None:
    # The gate accepted the item, then, replayed with a tighter threshold, flagged it: the flag is its
    # newest verdict (the first acceptance delivered late, say on the intake's first run, changes nothing).
    envelope = flag(parts, 0)
    older = accepted_envelope(envelope, produced_at=envelope.produced_at - timedelta(seconds=60))

    assert parts.tasks.close_accepted(older) == []
    assert parts.tasks.get(envelope.event_id).state == "pending"


def test_an_acceptance_of_another_render_of_the_item_leaves_the_task_open(parts: ConsoleParts) -> None:
    envelope = flag(parts, 0)
    # The same item id rendered again (a changed scene library): other pixels, which no one has judged.
    rerender = rerendered(parts, envelope)

    accepted = accepted_envelope(envelope, produced_at=later(envelope), matted=rerender)
    assert parts.tasks.close_accepted(accepted) == []
    assert parts.tasks.get(envelope.event_id).state == "pending"


def test_a_newer_flag_opens_the_task_again_and_an_older_one_does_not(parts: ConsoleParts) -> None:
    envelope = flag(parts, 0)
    parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope, 60)))

    # The first flag delivered again (a redelivery, a replay from the dead-letter topic): still accepted.
    assert parts.tasks.add_pending(envelope) is False
    assert parts.tasks.get(envelope.event_id).state == "accepted"

    # The gate replayed again with a tighter threshold flags it anew: a reviewer is wanted again.
    tighter = envelope.payload.model_copy(update={"reasons": ["product_drift"]})
    flagged_again = envelope.model_copy(update={"payload": tighter, "produced_at": later(envelope, 120)})
    assert parts.tasks.add_pending(flagged_again) is False
    task = parts.tasks.get(envelope.event_id)
    assert (task.state, task.reasons, task.decided_by, task.decided_at) == (
        "pending",
        ["product_drift"],
        None,
        None,
    )
    entry = parts.tasks.audit(envelope.event_id)[-1]
    assert (entry.action, entry.previous_state, entry.new_state) == ("intake_update", "accepted", "pending")
    decide_as_alice(parts, envelope.event_id, "reject", "wrong_product")
    assert parts.tasks.get(envelope.event_id).state == "rejected"


def test_a_task_table_from_before_the_accepted_state_is_migrated_with_its_rows(
    tmp_path: Path, parts: ConsoleParts
) -> None:
    envelope = flag(parts, 0)
    old = tmp_path / "old.sqlite3"
    tasks = task_table_before("accepted", old, parts.tasks)

    assert [task.state for task in tasks.query(TaskFilter(state=None))] == ["pending"]
    assert tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope))) == [
        envelope.event_id
    ]
    assert TaskStore(old).get(envelope.event_id).state == "accepted"  # opened again: no second copy


def label_studio_export(task_id: str, verdict: str) -> list[dict[str, Any]]:
    """Label Studio's export of one task that annotator 7 approved or rejected (no brush stroke)."""
    choice = {"type": "choices", "from_name": "decision", "value": {"choices": [verdict]}}
    return [{"data": {"skuforge_task_id": task_id}, "annotations": [{"completed_by": 7, "result": [choice]}]}]


def test_the_label_studio_import_skips_an_approval_of_an_accepted_task_without_calling_it_lost(
    parts: ConsoleParts,
) -> None:
    envelope = flag(parts, 0)
    parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope)))

    export = label_studio_export(envelope.event_id, "approve")
    (outcome,) = import_annotations(parts.tasks, parts.store, export)

    assert outcome.outcome == "skipped" and "the gate accepted" in outcome.detail
    assert not outcome.annotation_lost
    assert parts.tasks.get(envelope.event_id).state == "accepted"
    assert parts.tasks.audit(envelope.event_id)[-1].action == "gate_accepted"  # no stray claim


def test_a_label_studio_rejection_of_a_task_the_gate_accepted_since_is_recorded(parts: ConsoleParts) -> None:
    # The annotator rejected the item; the gate, replayed, accepted it before the export was imported.
    # The trainstore lets a reviewer's rejection of a render stand against the gate's acceptance of it,
    # so the import records the rejection, as it would have before the acceptance. It was skipped as
    # "accepted" (not counted lost), and the item, which a person had rejected, stayed in the store.
    envelope = flag(parts, 0)
    parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope)))

    export = label_studio_export(envelope.event_id, "reject")
    (outcome,) = import_annotations(parts.tasks, parts.store, export)

    assert outcome.outcome == "reject", outcome
    task = parts.tasks.get(envelope.event_id)
    assert (task.state, task.decision, task.decided_by) == ("rejected", "reject", "labelstudio:7")
    entry = parts.tasks.audit(envelope.event_id)[-1]
    assert (entry.action, entry.previous_state, entry.new_state) == ("reject", "accepted", "rejected")
    (event,) = parts.tasks.unpublished()
    assert event.task_id == envelope.event_id and event.payload.decision == "reject"
    # A newer acceptance changes nothing now: the person's rejection stands.
    assert parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope, 120))) == []


def test_the_reviewer_who_held_it_may_still_reject_it_and_not_approve_it(parts: ConsoleParts) -> None:
    held = flag(parts, 0)
    parts.tasks.claim(held.event_id, "alice", 60.0)
    parts.tasks.close_accepted(accepted_envelope(held, produced_at=later(held)))
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)

    approved = client.post(
        f"/api/tasks/{held.event_id}/decision",
        data={"decision": "approve_predicted"},
        headers={"X-CSRF-Token": token},
    )
    assert approved.status_code == 409 and "the gate accepted" in approved.json()["detail"]
    rejected = client.post(
        f"/api/tasks/{held.event_id}/decision",
        data={"decision": "reject", "reject_reason": "wrong_product"},
        headers={"X-CSRF-Token": token},
    )
    assert rejected.status_code == 200, rejected.text
    assert parts.tasks.get(held.event_id).state == "rejected"
    assert parts.tasks.unpublished()[0].payload.reject_reason == "wrong_product"


def test_the_page_of_an_item_the_gate_accepted_offers_a_rejection(parts: ConsoleParts) -> None:
    """The API records a person's rejection of an item the gate accepted, but the item's page had no
    reject button (its text pointed to Label Studio or the API): from the console, no one could."""
    envelope = flag(parts, 0)
    parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope)))
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client, "bob")  # who never held it: nobody is handed an accepted task
    page = client.get(f"/tasks/{envelope.event_id}")
    assert page.status_code == 200 and 'id="reject"' in page.text
    found = re.search(r'<script type="application/json" id="task-data">(.*?)</script>', page.text)
    assert found
    shown = json.loads(found.group(1))
    assert (shown["held"], shown["rejectable"]) == (False, True)

    # What the page's reject dialog sends.
    rejected = client.post(
        f"/api/tasks/{envelope.event_id}/decision",
        data={"decision": "reject", "reject_reason": "wrong_product: label cut off", "shown": shown["shown"]},
        headers={"X-CSRF-Token": token},
    )
    assert rejected.status_code == 200, rejected.text
    task = parts.tasks.get(envelope.event_id)
    assert (task.state, task.decided_by) == ("rejected", "bob")
    [event] = parts.tasks.unpublished()
    assert event.payload.reject_reason == "wrong_product: label cut off"
    decided = client.get(f"/tasks/{envelope.event_id}").text
    assert 'id="reject"' not in decided and '"rejectable": false' in decided


def test_a_flag_older_than_an_acceptance_that_closed_nothing_makes_no_task(parts: ConsoleParts) -> None:
    # The gate accepted the item (nothing waited on it); then an older flag of the same render arrives
    # (replayed from the dead-letter topic): the newer acceptance wins, as it would over an open task.
    # Before, the console kept no record of such acceptances and queued the item for review.
    envelope = pending_envelope(flagged_item(parts.store, 0))
    assert parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope))) == []

    assert parts.tasks.add_pending(envelope) is False
    task = parts.tasks.get(envelope.event_id)
    assert (task.state, task.decided_by) == ("accepted", "gate")
    assert parts.tasks.query() == []  # nothing waits for a reviewer
    assert [e.action for e in parts.tasks.audit(envelope.event_id)] == ["gate_accepted"]

    # A flag produced after the acceptance (the gate replayed with a tighter threshold) wants a person.
    flagged_again = envelope.model_copy(update={"produced_at": later(envelope, 120)})
    parts.tasks.add_pending(flagged_again)
    assert parts.tasks.get(envelope.event_id).state == "pending"


def test_an_acceptance_that_closed_nothing_leaves_newer_flags_and_other_renders_queued(
    parts: ConsoleParts,
) -> None:
    envelope = pending_envelope(flagged_item(parts.store, 0))
    # An acceptance produced before the flag (the gate then flagged what it had accepted)...
    older = accepted_envelope(envelope, produced_at=envelope.produced_at - timedelta(seconds=60))
    # ...and a newer one of another render of the item (same item id, other pixels: nobody judged these).
    rerender = rerendered(parts, envelope)
    for acceptance in (older, accepted_envelope(envelope, produced_at=later(envelope), matted=rerender)):
        assert parts.tasks.close_accepted(acceptance) == []

    assert parts.tasks.add_pending(envelope) is True
    assert parts.tasks.get(envelope.event_id).state == "pending"


def test_a_copy_showing_a_render_the_gate_accepted_since_closes_the_open_task(parts: ConsoleParts) -> None:
    # The item was re-rendered under its item id; the gate flagged the new render, then (replayed with a
    # looser threshold) accepted it. The acceptance arrives first and closes nothing (the task still
    # shows the first render); the flag of the new render, older than the acceptance, arrives late.
    envelope = flag(parts, 0)
    rerender = rerendered(parts, envelope)
    parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=later(envelope, 120), matted=rerender))
    assert parts.tasks.get(envelope.event_id).state == "pending"

    copy = envelope.payload.model_copy(update={"matted": rerender})
    late = envelope.model_copy(update={"payload": copy, "produced_at": later(envelope, 60)})
    parts.tasks.add_pending(late)

    # As if the two had come in order: the acceptance, newer, closes the task of the render it accepted.
    task = parts.tasks.get(envelope.event_id)
    assert (task.state, task.decided_by) == ("accepted", "gate")
    assert task.pending.matted.generated.image.sha256 == rerender.generated.image.sha256
    assert parts.tasks.audit(envelope.event_id)[-1].action == "gate_accepted"
    # A flag of it produced after the acceptance opens it again.
    newest = late.model_copy(update={"produced_at": later(envelope, 180)})
    parts.tasks.add_pending(newest)
    assert parts.tasks.get(envelope.event_id).state == "pending"


def remembered_acceptances(parts: ConsoleParts) -> set[str]:
    """The event ids of the acceptances the task table's file remembers (``gate_acceptances``)."""
    with sqlite3.connect(parts.tasks.path) as db:
        return {row[0] for row in db.execute("SELECT event_id FROM gate_acceptances")}


def test_an_acceptance_is_forgotten_once_its_task_is_settled_for_good(parts: ConsoleParts) -> None:
    """Every acceptance was kept for good, a row per accepted render. A row decides only what a flag of
    its render does to the item's task (the flag and the acceptance of one matted item share the event
    id); once that task is approved, rejected or withdrawn, no flag changes it: the row goes, and an
    acceptance arriving after that is not written."""
    approved, rejected, still_open = flag(parts, 0), flag(parts, 1), flag(parts, 2)
    withdrawn = pending_envelope(flagged_item(parts.store, 3, sku_id="SKU-00002"))
    parts.tasks.add_pending(withdrawn)
    for envelope in (approved, still_open, withdrawn):  # older than the flags: the tasks stay open
        older = envelope.produced_at - timedelta(seconds=60)
        assert parts.tasks.close_accepted(accepted_envelope(envelope, produced_at=older)) == []
    assert parts.tasks.close_accepted(accepted_envelope(rejected, produced_at=later(rejected))) == [
        rejected.event_id
    ]
    every = {e.event_id for e in (approved, rejected, still_open, withdrawn)}
    assert remembered_acceptances(parts) == every

    decide_as_alice(parts, approved.event_id)
    record_decision(  # a person's rejection stands against the gate's acceptance
        parts.tasks,
        parts.store,
        task_id=rejected.event_id,
        reviewer="alice",
        decision="reject",
        reject_reason="wrong_product",
        mask_bytes=None,
        max_pixels=10_000_000,
        max_bytes=10_000_000,
    )
    photo_id = withdrawn.payload.matted.generated.reference_photo_id
    assert parts.tasks.withdraw_photos({"SKU-00002": {photo_id}}) == [withdrawn.event_id]
    assert remembered_acceptances(parts) == {still_open.event_id}

    # A later acceptance of a settled task is not written, and the old flags still change nothing.
    assert parts.tasks.close_accepted(accepted_envelope(approved, produced_at=later(approved, 300))) == []
    assert remembered_acceptances(parts) == {still_open.event_id}
    for envelope in (approved, rejected, withdrawn):
        assert parts.tasks.add_pending(envelope) is False
    states = [parts.tasks.get(e.event_id).state for e in (approved, rejected, withdrawn, still_open)]
    assert states == ["approved", "rejected", "withdrawn", "pending"]
