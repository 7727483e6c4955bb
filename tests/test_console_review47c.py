"""Found in review 47 of the console: the HTML error page linked /static/console.css, which the login
gate answers with a 401 (or its own 502/503) without a live session, so an error from the gate itself
showed as an unstyled page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from shared.errors import BadInput, TransientError
from tests.support.console import app_for, build_console, login, with_flagged

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize(
    ("error", "status"),
    [(TransientError("database is locked"), 503), (BadInput("session_unreadable", "does not parse"), 502)],
    ids=["503", "502"],
)
def test_an_error_page_from_the_login_gate_is_styled_by_what_it_carries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    parts = with_flagged(build_console(tmp_path), 1)
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    login(client)

    def fails(*args: object) -> bool:
        raise error

    monkeypatch.setattr(parts.tasks, "session_revoked", fails)  # every request answers the gate's error
    page = client.get("/", headers=BROWSER)

    assert page.status_code == status, page.text
    assert page.headers["content-type"].startswith("text/html")
    # What styles the page arrives with it: a stylesheet it links is fetched by the browser under the
    # same failing gate (or with no session), and was a 401/502/503 there, the page unstyled.
    for href in re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.text):
        assert client.get(href, headers={"Accept": "text/css,*/*;q=0.1"}).status_code == 200, href
    assert re.search(r"<style>[^<]*body \{[^}]*background", page.text), page.text
    assert re.search(r"<style>[^<]*\.error \{[^}]*color", page.text), page.text
