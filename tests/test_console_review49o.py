"""Review 49 (O): what is left of a console task no decision on which can be sent (an object's URI
stored with a character the contract refuses since review 48): the Label Studio import leaves nothing
behind for it, and the operator can see and close it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from services.console.labelstudio import import_annotations, mask_to_rle
from services.console.tasks import UnreadableDecision
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    flagged_item,
    login,
    pending_envelope,
    rejected_then_stored_as_before_review48,
)

OLDEST = "skuforge_console_oldest_task_age_seconds"
UNSENDABLE = "skuforge_console_unsendable_tasks"


def _stored_with(tmp_path: Path, char: str = "\u202e") -> tuple[ConsoleParts, str]:
    """A console whose one task was stored (before review 48) with ``char`` in its expected mask's uri."""
    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    generated = pending.matted.generated
    # Made by hand: the store refuses such a key now, and the contract such a uri.
    expected = generated.expected_mask.model_copy(
        update={"uri": generated.expected_mask.uri.replace(".png", f"{char}gnp.png")}
    )
    matted = pending.matted.model_copy(
        update={"generated": generated.model_copy(update={"expected_mask": expected})}
    )
    envelope = pending_envelope(pending.model_copy(update={"matted": matted}))
    parts.tasks.add_pending(envelope)
    return parts, envelope.event_id


def _painted(task_id: str) -> dict[str, Any]:
    """A Label Studio task whose annotator painted a product mask."""
    mask = np.zeros((128, 128), np.uint8)
    mask[10:60, 10:60] = 255
    value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["product"]}
    stroke = {"type": "brushlabels", "from_name": "mask", "to_name": "image", "value": value}
    return {"data": {"skuforge_task_id": task_id}, "annotations": [{"completed_by": 7, "result": [stroke]}]}


def test_an_edited_mask_imported_for_it_is_not_stored_and_the_task_waits_unclaimed(tmp_path: Path) -> None:
    # The edited mask was written to the store before the decision was refused: an object nothing
    # points at, one per import of the export.
    parts, task_id = _stored_with(tmp_path)
    keys_before = set(parts.store.list_keys())
    [outcome] = import_annotations(parts.tasks, parts.store, [_painted(task_id)])
    assert outcome.outcome == "skipped"
    assert "U+202E" in outcome.detail and "expected_mask.uri" in outcome.detail
    assert set(parts.store.list_keys()) == keys_before
    [task] = parts.tasks.query()
    assert (task.task_id, task.state, task.claimed_by) == (task_id, "pending", None)


# A bidi override and a line separator the JSON holds as they are; a terminal escape, escaped.
@pytest.mark.parametrize("char", ["\u202e", "\u2028", "\x1b"], ids=["bidi", "line_separator", "escape"])
def test_it_is_counted_on_its_own_not_as_the_oldest_waiting_task(tmp_path: Path, char: str) -> None:
    # It waited for good, as no decision on it can be sent: the oldest-age gauge rose for ever and
    # SkuforgeConsoleBacklogOld fired with nothing a reviewer could do about it.
    parts, _ = _stored_with(tmp_path, char)
    registry = parts.console.metrics.registry
    parts.clock.advance(100)
    assert registry.get_sample_value(OLDEST) == 0
    assert registry.get_sample_value(UNSENDABLE) == 1
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 1)))
    parts.clock.advance(30)
    assert registry.get_sample_value(OLDEST) == 30
    assert registry.get_sample_value(UNSENDABLE) == 1


def test_a_decision_recorded_on_it_before_review_48_shows_on_its_page_and_is_still_never_sent(
    tmp_path: Path,
) -> None:
    # Read as a topic's event, the decision no longer read: the item page and the API answered 502
    # decision_unreadable, so nobody could see what had been decided. Shown as stored; the relay still
    # reads it strictly and sets it aside unsent, as every consumer would dead-letter it.
    parts = build_console(tmp_path)
    # As a console before review 48 stored it: a U+202E in an object's uri, in the task and its decision.
    task = rejected_then_stored_as_before_review48(parts, tmp_path, "\u202egnp.png")
    shown = parts.tasks.outbox(task.task_id)
    assert shown is not None and shown.payload.decision == "reject"
    assert "\u202egnp.png" in shown.payload.pending.matted.generated.expected_mask.uri
    with TestClient(app_for(parts)) as client:
        login(client)
        answer = client.get(f"/api/tasks/{task.task_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["resolved"]["decision"] == "reject"
        assert client.get(f"/tasks/{task.task_id}").status_code == 200
    [waiting] = parts.tasks.unsent()
    assert isinstance(waiting, UnreadableDecision)
    assert "U+202E" in parts.tasks.discard_unreadable(task.task_id)  # the operator's way out
    assert parts.tasks.unsent() == []
