"""The console after review 35: a page opened after the session ran out says so on the login form, as a
form posted then does; a page opened with no session at all does not."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.requests import cookie_parser
from starlette.testclient import TestClient

from services.console.security import SESSION_COOKIE
from tests.support.console import (
    BROWSER_ACCEPT,
    ConsoleParts,
    app_for,
    flagged_parts_fixture,
    login,
    ran_out_session,
)

parts = flagged_parts_fixture(1)

RAN_OUT = "your session ran out"


def _client(parts: ConsoleParts) -> TestClient:
    return TestClient(app_for(parts), base_url="http://console.test")


def _ended_elsewhere(parts: ConsoleParts) -> str:
    """A session cookie of alice's that the console ended (logged out from another copy of it)."""
    signer = parts.console.signer
    cookie, session = signer.issue("alice", credential=signer.credential_tag("alice", "alice-password"))
    parts.tasks.revoke_session(session.csrf_token, session.expires_at)
    return cookie


@pytest.mark.parametrize("ended", [ran_out_session, _ended_elsewhere])
def test_an_item_page_opened_after_the_session_ended_says_so_on_the_login_form(
    parts: ConsoleParts, ended: object
) -> None:
    """A reload of the item page (or a link followed) once the session had run out went to a bare login
    form: the reviewer could not tell "your session ran out" from "you never logged in". The form says
    the session ran out, and logging in comes back to the item."""
    client = _client(parts)
    assert callable(ended)
    client.cookies.set(SESSION_COOKIE, ended(parts))
    (task,) = parts.tasks.query()
    item = f"/tasks/{task.task_id}"

    response = client.get(item, headers={"accept": BROWSER_ACCEPT}, follow_redirects=False)

    assert response.status_code == 303, response.text
    login_page = urlsplit(response.headers["location"])
    assert login_page.path == "/login"
    assert parse_qs(login_page.query)["next"] == [item]
    shown = client.get(response.headers["location"])
    assert RAN_OUT in shown.text
    assert "what you sent was not done" not in shown.text  # nothing was sent: a page was only opened
    assert f'name="next" value="{item}"' in shown.text


def test_a_page_opened_without_a_session_cookie_goes_to_a_plain_login_form(parts: ConsoleParts) -> None:
    """Never logged in (or logged out here, which deletes the cookie): no note of a session that ran out."""
    client = _client(parts)
    (task,) = parts.tasks.query()

    response = client.get("/?sku=SKU-0", headers={"accept": BROWSER_ACCEPT}, follow_redirects=False)

    assert response.status_code == 303
    assert parse_qs(urlsplit(response.headers["location"]).query) == {"next": ["/?sku=SKU-0"]}
    assert RAN_OUT not in client.get(response.headers["location"]).text

    token = login(client)
    logout = client.post(
        "/logout", data={"csrf_token": token}, headers={"accept": BROWSER_ACCEPT}, follow_redirects=False
    )
    assert logout.status_code == 303 and SESSION_COOKIE not in client.cookies
    after = client.get(f"/tasks/{task.task_id}", headers={"accept": BROWSER_ACCEPT})
    assert after.url.path == "/login" and RAN_OUT not in after.text


def test_the_session_cookie_outlives_the_session_so_the_browser_still_sends_it_when_it_ran_out(
    parts: ConsoleParts,
) -> None:
    """Its max-age was the session's own, so the browser dropped the cookie the moment the session ran
    out, and the console saw a request with no cookie: the note above was never shown. The cookie is
    kept longer; the session in it still ends on time (signed into it, checked by the console)."""
    client = _client(parts)
    page = client.get("/login")
    nonce = page.text.split('name="login_nonce" value="', 1)[1].split('"', 1)[0]
    fields = {"reviewer": "alice", "password": "alice-password", "login_nonce": nonce, "next": "/"}

    response = client.post("/login", data=fields, follow_redirects=False)

    [set_cookie] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}=")]
    max_age = int(set_cookie.lower().split("max-age=", 1)[1].split(";", 1)[0])
    assert max_age > parts.console.signer.ttl_s
    # As the console reads it (a value with base64 padding is sent quoted).
    cookie = cookie_parser(f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}")[SESSION_COOKIE]
    session = parts.console.signer.verify(cookie)
    assert session is not None and session.expires_at <= time.time() + parts.console.signer.ttl_s
    assert parts.console.signer.verify(cookie, now=session.expires_at) is None
