"""What the console answers when its table is unavailable at the login gate, what content type it
serves an event's image with, and how long a browser may keep it."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from schemas.common import ImageRef
from schemas.envelope import Envelope
from shared.errors import BadInput, TransientError
from tests.support.console import ConsoleParts, app_for, build_console, flagged_item, login, pending_envelope


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    return parts


def test_a_locked_table_at_the_login_gate_answers_503_retry_as_the_routes_do(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the gate's TransientError bypassed the app's handlers: a bare text 500 the page's
    # script could not tell from a bug, where a route answers a JSON 503 (retry).
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    login(client)

    def locked(*args: object) -> bool:
        raise TransientError(f"task table {parts.tasks.path}: database is locked")

    monkeypatch.setattr(parts.tasks, "counts", locked)
    from_route = client.get("/api/tasks")
    monkeypatch.undo()
    monkeypatch.setattr(parts.tasks, "session_revoked", locked)
    from_gate = client.get("/api/tasks")
    assert from_gate.status_code == from_route.status_code == 503
    assert from_gate.json() == from_route.json()
    assert from_gate.json()["detail"].startswith("temporarily unavailable: task table")
    assert from_gate.headers["x-content-type-options"] == "nosniff"  # still wrapped by the headers


def test_a_bad_stored_object_at_the_login_gate_answers_502_with_the_reason(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    login(client)

    def unreadable(*args: object) -> bool:
        raise BadInput("session_unreadable", "the revoked-sessions row does not parse")

    monkeypatch.setattr(parts.tasks, "session_revoked", unreadable)
    response = client.get("/api/tasks")
    assert response.status_code == 502
    assert response.json() == {
        "detail": "stored object unusable: session_unreadable: the revoked-sessions row does not parse"
    }


@pytest.mark.parametrize(
    ("media_type", "served_as"),
    [
        ("text/html", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("image/jpeg", "image/jpeg"),
    ],
)
def test_an_image_is_served_only_as_an_image_type(tmp_path: Path, media_type: str, served_as: str) -> None:
    # Before, an event's media_type was served as given: text/html from a Kafka event ran as a page
    # of the console's origin, with the reviewer's session.
    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    stored = parts.store.put_bytes("photos/SKU-00001/item-0000/p1.png", b"<script>alert(1)</script>")
    reference = ImageRef(
        uri=stored.uri, sha256=stored.sha256, bytes=stored.bytes, width=1, height=1, media_type=media_type
    )
    generated = pending.matted.generated.model_copy(update={"reference_image": reference})
    pending = pending.model_copy(
        update={"matted": pending.matted.model_copy(update={"generated": generated})}
    )
    parts.tasks.add_pending(pending_envelope(type(pending).model_validate_json(pending.model_dump_json())))
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    task_id = parts.tasks.query()[0].task_id
    response = client.get(f"/tasks/{task_id}/images/reference")
    assert response.status_code == 200
    assert response.headers["content-type"] == served_as
    assert response.headers["x-content-type-options"] == "nosniff"


def _page_data(client: TestClient, task_id: str) -> dict[str, Any]:
    """The item page's data for its script (image addresses, what it shows)."""
    page = client.get(f"/tasks/{task_id}")
    assert page.status_code == 200, page.text
    data = re.search(r'<script type="application/json" id="task-data">(.*?)</script>', page.text, re.S)
    assert data, page.text
    loaded: dict[str, Any] = json.loads(html.unescape(data.group(1)))
    return loaded


def _matted_again(parts: ConsoleParts, envelope: Envelope[Any]) -> ImageRef:
    """The gate replayed after the item was matted again (a new matting model): the same event id, a
    new predicted mask (stored under its digest, as the matting stage does); returns the mask."""
    matted = envelope.payload.matted
    other_mask = np.zeros((matted.predicted_mask.height, matted.predicted_mask.width), np.uint8)
    other_mask[10:60, 10:60] = 255
    new_ref = parts.store.put_image(
        f"masks/predicted/{envelope.sku_id}/item-0000.png", other_mask, digest_in_key=True
    )
    rematted = envelope.payload.model_copy(
        update={"matted": matted.model_copy(update={"predicted_mask": new_ref})}
    )
    later = envelope.produced_at + timedelta(seconds=60)
    parts.tasks.add_pending(envelope.model_copy(update={"payload": rematted, "produced_at": later}))
    return new_ref


def test_an_item_image_replaced_by_a_replay_is_not_served_from_the_browser_cache(parts: ConsoleParts) -> None:
    """The gate's replay of a re-matted item updates an open task's predicted mask. The image's address
    stayed the same and was served ``immutable``: a reviewer's browser kept showing the old mask for
    an hour, reloads included, while "approve predicted" sent the new one."""
    (task,) = parts.tasks.query()
    envelope = pending_envelope(task.pending)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    before = _page_data(client, envelope.event_id)["images"]
    assert client.get(before["predicted"]).status_code == 200

    new_ref = _matted_again(parts, envelope)

    after = _page_data(client, envelope.event_id)["images"]
    assert after["predicted"] != before["predicted"]  # a new address: no cached copy answers for it
    assert after["generated"] == before["generated"]  # unchanged images keep theirs (and their cache)
    second = client.get(after["predicted"])
    assert second.status_code == 200 and second.content == parts.store.read_verified(new_ref)
    assert "immutable" in second.headers["cache-control"]
    # An address without the digest (an old bookmark, a script) is checked again each time.
    bare = client.get(f"/tasks/{envelope.event_id}/images/predicted")
    assert bare.status_code == 200 and "immutable" not in bare.headers["cache-control"]
    stale = client.get(before["predicted"])  # the old address now names other bytes: not cached for good
    assert stale.status_code == 200 and "immutable" not in stale.headers["cache-control"]


def test_a_decision_on_pixels_a_replay_replaced_while_the_page_was_open_is_refused(
    parts: ConsoleParts,
) -> None:
    """A reviewer opened the item, then the replay replaced its predicted mask; their "approve predicted"
    recorded and published the new mask, which they had never seen. The page sends what it showed
    (``shown``), and a decision on pixels no longer the task's is a 409 that says to reload."""
    (task,) = parts.tasks.query()
    envelope = pending_envelope(task.pending)
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    headers = {"X-CSRF-Token": token}
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    shown_before = _page_data(client, task.task_id)["shown"]

    new_ref = _matted_again(parts, envelope)

    stale = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "approve_predicted", "shown": shown_before},
        headers=headers,
    )
    assert stale.status_code == 409 and "reload" in stale.json()["detail"], stale.text
    assert parts.tasks.get(task.task_id).state == "claimed" and parts.tasks.outbox(task.task_id) is None
    # Reloaded, the page shows the new mask and the decision is on it.
    shown_now = _page_data(client, task.task_id)["shown"]
    assert shown_now != shown_before
    fresh = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "approve_predicted", "shown": shown_now},
        headers=headers,
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["resolved"]["final_mask"]["uri"] == new_ref.uri
