"""Every url-encoded text field the console reads is UTF-8, or the request is a 422 naming the field.

Before, only the decision's ``reject_reason`` was checked (for U+FFFD). The framework reads a url-encoded
field's percent-escapes as UTF-8 with U+FFFD for bytes that are not, and raw bytes as latin-1, silently:
a login whose ``reviewer`` held ``%E9`` (latin-1 "é") was looked up, throttled and refused as someone
else, and a reason sent as raw UTF-8 bytes was stored as "cafÃ©", text no one sent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.support.console import app_for, build_console, login, one_task


def _login_form(client: TestClient, **fields: bytes) -> bytes:
    """A login form body, url-encoded by hand: ``fields`` replace the form's own (as raw bytes)."""
    page = client.get("/login")
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce, page.text
    form = {b"reviewer": b"alice", b"password": b"alice-password", b"login_nonce": nonce.group(1).encode()}
    form.update({name.encode(): value for name, value in fields.items()})
    return b"&".join(name + b"=" + value for name, value in form.items())


@pytest.mark.parametrize(
    ("field", "value"),
    [("reviewer", b"al%E9ce"), ("password", b"alice-password%FF"), ("reviewer", b"al\xe9ce")],
)
def test_a_login_field_that_is_not_utf8_is_refused_naming_it(
    tmp_path: Path, field: str, value: bytes
) -> None:
    parts = build_console(tmp_path)
    client = TestClient(app_for(parts), base_url="http://console.test")

    response = client.post(
        "/login",
        content=_login_form(client, **{field: value}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"{field} is not UTF-8 text: send it as UTF-8"
    # The form, in UTF-8, still logs in.
    login(client)


def test_a_reject_reason_sent_as_raw_bytes_is_refused_not_stored_as_latin1(tmp_path: Path) -> None:
    parts, task, client, token = one_task(tmp_path)

    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        content="decision=reject&reject_reason=café".encode(),
        headers={"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "reject_reason is not UTF-8 text: send it as UTF-8"
    assert parts.tasks.get(task.task_id).state == "claimed"

    # Percent-encoded UTF-8, as a browser sends it, is stored as sent.
    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        content=b"decision=reject&reject_reason=caf%C3%A9+bleu",
        headers={"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["resolved"]["reject_reason"] == "café bleu"
