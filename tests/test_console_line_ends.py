"""A login's ``next=`` target and a stored scrypt entry are checked whole, up to their last character.

Before: ``re.match`` with ``^...$`` took a value ending in a newline (``$`` matches before a final
"\\n"), so ``next=/queue%0A`` sent a reviewer, once logged in, to ``/queue%0A`` (a 404) instead of the
queue, and ``parse_scrypt`` took an entry with a newline after its key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.console.security import hash_password, parse_scrypt
from tests.support.console import app_for, build_console


def test_a_next_target_ending_in_a_newline_goes_to_the_queue(tmp_path: Path) -> None:
    client = TestClient(app_for(build_console(tmp_path)), base_url="http://console.test")
    page = client.get("/login?next=/queue%0A")
    assert 'name="next" value="/"' in page.text
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce, page.text
    form = {"reviewer": "alice", "password": "alice-password", "login_nonce": nonce.group(1)}
    response = client.post("/login", data={**form, "next": "/queue\n"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_a_scrypt_entry_ending_in_a_newline_is_refused() -> None:
    entry = hash_password("pw", cost=(16, 8, 1))
    assert parse_scrypt(entry)[:3] == (16, 8, 1)
    with pytest.raises(ValueError, match="must be 'scrypt:N:r:p:salt:key'"):
        parse_scrypt(entry + "\n")
