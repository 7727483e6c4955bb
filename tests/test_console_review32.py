"""The console after review 32: a decision, from the web page, a script or a Label Studio export, is
recorded on the pixels it was checked against; a form's CSRF token is read whatever the case of its
media type; the time to decision counts from the decider's own claim only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from starlette.testclient import TestClient

import services.console.decisions as decisions
import services.console.labelstudio as labelstudio
from schemas.common import ImageRef
from schemas.envelope import Envelope
from services.console.labelstudio import export_tasks, import_annotations, mask_to_rle
from services.console.tasks import Task
from shared.images import encode_png
from shared.store import ObjectStore
from tests.support.console import (
    ConsoleParts,
    accepted_envelope,
    app_for,
    flagged_item,
    flagged_parts_fixture,
    login,
    pending_envelope,
)

parts = flagged_parts_fixture(1)


def rerendered_replay(parts: ConsoleParts, task: Task) -> Envelope[Any]:
    """The gate's replay of ``task``'s item rendered again at 96x96 (same event id, produced later)."""
    envelope = pending_envelope(task.pending)
    other = flagged_item(parts.store, 1, size_px=96).matted
    assert (other.generated.image.width, task.pending.matted.generated.image.width) == (96, 128)
    generated = other.generated.model_copy(update={"item_id": task.item_id})
    return envelope.model_copy(
        update={
            "payload": envelope.payload.model_copy(
                update={"matted": other.model_copy(update={"generated": generated})}
            ),
            "produced_at": envelope.produced_at + timedelta(seconds=60),
        }
    )


def replayed_while_the_mask_is_stored(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, module: Any, replay: Envelope[Any]
) -> None:
    """``module``'s mask writes deliver ``replay`` to the task table once the mask is stored, as the
    intake (another thread or process) may."""
    store_edited_mask = module.store_edited_mask

    def stored_while_the_gate_replays(
        store: ObjectStore, held: Task, mask: npt.NDArray[np.uint8]
    ) -> ImageRef:
        ref: ImageRef = store_edited_mask(store, held, mask)
        parts.tasks.add_pending(replay)
        return ref

    monkeypatch.setattr(module, "store_edited_mask", stored_while_the_gate_replays)


def test_a_label_studio_mask_checked_against_a_render_a_replay_replaced_before_the_save_is_skipped(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import checks an annotation against the task as it read it (the pixels the export named,
    the mask's size) and stores the mask, then records the decision on the task as the table holds it
    then: a replay in between had the 128x128 mask recorded for the 96x96 render that replaced it."""
    (task,) = parts.tasks.query()
    replayed_while_the_mask_is_stored(parts, monkeypatch, labelstudio, rerendered_replay(parts, task))
    (exported,) = export_tasks(parts.tasks, parts.store).tasks
    mask = np.zeros((128, 128), np.uint8)
    mask[20:80, 20:80] = 255
    value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["product"]}
    brush = {"type": "brushlabels", "from_name": "mask", "to_name": "image", "value": value}
    exported["annotations"] = [{"completed_by": 7, "result": [brush]}]

    (outcome,) = import_annotations(parts.tasks, parts.store, [exported])

    assert outcome.outcome == "skipped" and outcome.annotation_lost, outcome
    assert "export it again" in outcome.detail
    held = parts.tasks.get(task.task_id)
    assert held.state == "pending" and parts.tasks.outbox(task.task_id) is None
    assert held.pending.matted.generated.image.width == 96


def test_a_mask_checked_against_a_render_a_replay_replaced_before_the_save_is_refused(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision's mask was checked against the task as first read (its size, some product), written
    to the store, and the decision recorded on the task as the table held it by then. When the gate's
    replay replaced the render in between (here with one of another size), a decision without
    ``shown`` (a script) was recorded with a 128x128 mask for a 96x96
    image: the trainstore dead-letters that, and the console showed the item decided."""
    (task,) = parts.tasks.query()
    replayed_while_the_mask_is_stored(parts, monkeypatch, decisions, rerendered_replay(parts, task))
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


@pytest.mark.parametrize("media_type", ["Application/X-WWW-Form-Urlencoded", "MULTIPART/FORM-DATA"])
def test_a_form_whose_media_type_is_not_lower_case_is_read_for_its_csrf_token(
    parts: ConsoleParts, media_type: str
) -> None:
    """Media types are case-insensitive (RFC 9110), and the body limits read them so: the CSRF check
    looked for the token in the form only under a lower-case type, and answered 403 "missing or wrong
    CSRF token" to a form that carried the right one."""
    (task,) = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    files = {"f": b""} if media_type.lower().startswith("multipart") else None
    request = client.build_request("POST", "/claim-next", data={"csrf_token": token}, files=files)
    original = request.headers["content-type"]
    request.headers["content-type"] = media_type + original[len(media_type) :]
    response = client.send(request, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/tasks/{task.task_id}"


def test_a_rejection_of_an_accepted_item_by_someone_who_never_claimed_it_is_no_time_to_decision(
    parts: ConsoleParts,
) -> None:
    """The time-to-decision histogram (claim to decision) took the claim a task kept when the gate
    closed it: bob rejecting, two hours on, an item alice had held was counted as a decision two hours
    after a claim, his, that he never made."""
    (task,) = parts.tasks.query()
    parts.tasks.claim(task.task_id, "alice", 60.0)
    flagged = pending_envelope(task.pending)
    parts.tasks.close_accepted(
        accepted_envelope(flagged, produced_at=flagged.produced_at + timedelta(seconds=60))
    )
    parts.clock.advance(7200.0)
    client = TestClient(app_for(parts), base_url="http://console.test")
    rejected = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "reject", "reject_reason": "wrong_product"},
        headers={"X-CSRF-Token": login(client, "bob")},
    )
    assert rejected.status_code == 200, rejected.text
    registry = parts.console.metrics.registry
    assert registry.get_sample_value("skuforge_console_decision_seconds_count") == 0.0
    assert registry.get_sample_value("skuforge_console_task_age_seconds_count") == 1.0  # still decided


def test_a_queue_page_claim_someone_else_holds_lands_back_on_the_queue_with_the_reason(
    parts: ConsoleParts,
) -> None:
    """The queue page's claim button posts a form: when bob had claimed the item first, the browser
    was shown a bare JSON 409 body instead of the queue. It lands back on the queue (a 303, the
    filters kept) with the reason shown; the API still answers 409."""
    (task,) = parts.tasks.query()
    bob = TestClient(app_for(parts), base_url="http://console.test")
    assert bob.post(
        f"/api/tasks/{task.task_id}/claim", headers={"X-CSRF-Token": login(bob, "bob")}
    ).is_success
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)

    refused = client.post(
        f"/tasks/{task.task_id}/claim?state=claimed", data={"csrf_token": token}, follow_redirects=False
    )

    assert refused.status_code == 303, refused.text
    location = refused.headers["location"]
    assert location.startswith("/?state=claimed&refused="), location
    page = client.get(location)
    assert page.status_code == 200
    assert f"could not claim: task {task.task_id} is claimed by bob" in page.text
    assert 'action="/claim-next?state=claimed"' in page.text  # the note is not carried on
    crafted = client.get("/", params={"refused": "<script>alert(1)</script>"})
    assert "alert(1)" not in crafted.text  # only the server's own notes are shown (test_console_review33)
    api = client.post(f"/api/tasks/{task.task_id}/claim", headers={"X-CSRF-Token": token})
    assert api.status_code == 409 and "claimed by bob" in api.json()["detail"]


def test_a_queue_page_release_of_a_lease_that_is_gone_lands_back_on_the_queue_with_the_reason(
    parts: ConsoleParts,
) -> None:
    """A release form posted after the lease ran out and bob claimed the item: the browser got a bare
    JSON 409 body; it lands back on the queue with the reason."""
    (task,) = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    assert client.post(f"/tasks/{task.task_id}/claim", data={"csrf_token": token}).status_code == 200
    parts.clock.advance(parts.console.console.console_lease_s + 1.0)
    parts.tasks.claim(task.task_id, "bob", 60.0)

    refused = client.post(
        f"/tasks/{task.task_id}/release", data={"csrf_token": token}, follow_redirects=False
    )

    assert refused.status_code == 303, refused.text
    page = client.get(refused.headers["location"])
    assert page.status_code == 200
    assert f"could not release: task {task.task_id} is not claimed by alice" in page.text, page.text
    assert parts.tasks.get(task.task_id).claimed_by == "bob"
