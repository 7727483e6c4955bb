"""What the console answers when its table is unavailable at the login gate, and what content type
it serves an event's image with."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from schemas.common import ImageRef
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
