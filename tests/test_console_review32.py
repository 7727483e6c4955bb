"""The console after review 32: a decision is recorded on the pixels it was checked against."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import numpy.typing as npt
import pytest
from starlette.testclient import TestClient

import services.console.decisions as decisions
from schemas.common import ImageRef
from services.console.tasks import Task
from shared.images import encode_png
from shared.store import ObjectStore
from tests.support.console import (
    ConsoleParts,
    app_for,
    flagged_item,
    flagged_parts_fixture,
    login,
    pending_envelope,
)

parts = flagged_parts_fixture(1)


def test_a_mask_checked_against_a_render_a_replay_replaced_before_the_save_is_refused(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision's mask was checked against the task as first read (its size, some product), written
    to the store, and the decision recorded on the task as the table held it by then. When the gate's
    replay replaced the render in between (here with one of another size), a decision without
    ``shown`` (a script, a Label Studio export without it) was recorded with a 128x128 mask for a 96x96
    image: the trainstore dead-letters that, and the console showed the item decided."""
    (task,) = parts.tasks.query()
    envelope = pending_envelope(task.pending)
    other = flagged_item(parts.store, 1, size_px=96).matted
    assert (other.generated.image.width, task.pending.matted.generated.image.width) == (96, 128)
    rerender = other.model_copy(
        update={"generated": other.generated.model_copy(update={"item_id": task.item_id})}
    )
    replay = envelope.model_copy(
        update={
            "payload": envelope.payload.model_copy(update={"matted": rerender}),
            "produced_at": envelope.produced_at + timedelta(seconds=60),
        }
    )
    store_edited_mask = decisions.store_edited_mask

    def stored_while_the_gate_replays(
        store: ObjectStore, held: Task, mask: npt.NDArray[np.uint8]
    ) -> ImageRef:
        ref = store_edited_mask(store, held, mask)
        parts.tasks.add_pending(replay)  # the intake, meanwhile
        return ref

    monkeypatch.setattr(decisions, "store_edited_mask", stored_while_the_gate_replays)
    client = TestClient(app_for(parts), base_url="http://console.test")
    headers = {"X-CSRF-Token": login(client)}
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    mask = np.zeros((128, 128), np.uint8)
    mask[20:80, 20:80] = 255

    saved = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "approve_edited"},
        files={"mask": ("mask.png", encode_png(mask), "image/png")},
        headers=headers,
    )

    assert saved.status_code == 409 and "reload" in saved.json()["detail"], saved.text
    held = parts.tasks.get(task.task_id)
    assert held.state == "claimed" and parts.tasks.outbox(task.task_id) is None
    assert held.pending.matted.generated.image.width == 96  # what a decision is on now
