"""Password guessing at the console's login form is slowed: after a few failures for one reviewer
name, that name is refused for a while, even with the right password; a success clears the count."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from services.console.security import LoginThrottle
from tests.support.console import app_for, build_console, login


def _attempt(client: TestClient, reviewer: str, password: str) -> str:
    """POST the login form; the page it redirects to (where ``location`` sends the browser)."""
    page = client.get("/login")
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce
    response = client.post(
        "/login",
        data={"reviewer": reviewer, "password": password, "login_nonce": nonce.group(1), "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    return response.headers["location"]


def test_repeated_wrong_passwords_lock_the_name_for_a_while_and_say_so(tmp_path: Path) -> None:
    # Before: any number of guesses, as fast as the server answered.
    parts = build_console(tmp_path)
    now = [1000.0]
    parts.console.login_throttle = LoginThrottle(max_failures=3, window_s=60.0, clock=lambda: now[0])
    client = TestClient(app_for(parts), base_url="http://console.test")
    for _ in range(3):
        assert "error=credentials" in _attempt(client, "alice", "guess")
    locked = _attempt(client, "alice", "alice-password")  # right password, but locked
    assert "error=throttled" in locked
    assert "too many failed logins" in client.get(locked).text
    assert "error=credentials" in _attempt(client, "bob", "guess")  # another name is not locked
    now[0] += 61.0  # the failures have left the window
    login(client, "alice")  # and a success clears the count
    assert "error=credentials" in _attempt(client, "alice", "guess")


def test_the_throttle_forgets_names_it_no_longer_needs() -> None:
    # Names are whatever a client sends: the table of failures must not grow without bound.
    now = [0.0]
    throttle = LoginThrottle(max_failures=2, window_s=10.0, clock=lambda: now[0], max_names=100)
    for index in range(1000):
        throttle.failed(f"name-{index}")
    assert len(throttle) <= 100
    now[0] += 11.0
    throttle.failed("late")
    assert len(throttle) == 1


def test_logins_sent_together_get_no_more_tries_than_logins_sent_one_by_one() -> None:
    """A failure was counted after the password check (tens of milliseconds of scrypt, on a pool of
    40 threads): 40 guesses sent together all passed the throttle first. Each attempt now counts as it
    begins, and a success clears the count."""
    import threading

    throttle = LoginThrottle(max_failures=5, window_s=60.0, clock=lambda: 100.0)
    allowed: list[bool] = []
    start = threading.Barrier(40)

    def guess() -> None:
        start.wait()
        allowed.append(throttle.begin_attempt("alice") == 0.0)  # then the slow password check

    threads = [threading.Thread(target=guess) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 5 and len(allowed) == 40
    assert throttle.retry_after_s("alice") == 60.0
    throttle.succeeded("alice")
    assert throttle.begin_attempt("alice") == 0.0
