"""Console security review: a flood of made-up names cannot clear a real reviewer's failed logins,
an uploaded mask larger than its image is refused from its header, before it is decoded, and a
reviewer's password may be stored as its scrypt hash (``skuforge console hash-password``).

Before: a full throttle table forgot the name that failed longest ago, refused or not, so 10,000
failed logins under made-up names gave a locked reviewer's name five more guesses, again and again;
and a 40 kB PNG of 6300x6300 flat pixels was decoded (about 250 MB) before its size was compared.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.console import decisions, security
from services.console.config import parse_users
from services.console.security import OVERFLOW, LoginThrottle, check_password, hash_password
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    claim,
    decide,
    flagged_item,
    login,
    pending_envelope,
)


def test_a_flood_of_made_up_names_does_not_clear_a_refused_name() -> None:
    now = [1000.0]
    throttle = LoginThrottle(max_failures=5, window_s=60.0, clock=lambda: now[0], max_names=50)
    for _ in range(5):
        throttle.failed("alice")
    assert throttle.retry_after_s("alice") > 0

    for index in range(10 * throttle.max_names):  # made-up names, each failing once
        throttle.failed(f"made-up-{index}")

    assert throttle.retry_after_s("alice") > 0, "alice's count survived the flood"
    assert len(throttle) <= throttle.max_names
    # Names that are not refused make room for newcomers, so a reviewer who mistyped once is not
    # kept out by the flood...
    throttle.failed("bob")
    assert throttle.retry_after_s("bob") == 0
    # ...and once the window has passed, alice may try again.
    now[0] += 61.0
    assert throttle.retry_after_s("alice") == 0


def test_a_table_full_of_refused_names_counts_the_others_together() -> None:
    now = [1000.0]
    throttle = LoginThrottle(max_failures=2, window_s=60.0, clock=lambda: now[0], max_names=10)
    for index in range(10):
        for _ in range(2):
            throttle.failed(f"locked-{index}")
    assert len(throttle) == 10

    # No room, and no name that may be forgotten: the newcomers share one count.
    throttle.failed("carol")
    throttle.failed("dave")
    assert throttle.retry_after_s("erin") > 0, "the shared count is used up: newcomers wait"
    assert all(throttle.retry_after_s(f"locked-{index}") > 0 for index in range(10))
    assert OVERFLOW == "" and len(throttle) == 11  # the ten refused names, and the shared count


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0, sku_id="SKU-0")))
    return parts


def test_a_mask_larger_than_its_image_is_refused_before_it_is_decoded(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    task = parts.tasks.query()[0]
    claim(client, token, task.task_id)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((3000, 3000), np.uint8), "L").save(buffer, "PNG")  # 9 MP, a few kB
    decoded: list[int] = []
    real_decode = decisions.decode_mask

    def counting_decode(data: bytes, **limits: Any) -> npt.NDArray[np.uint8]:
        mask = real_decode(data, **limits)
        decoded.append(mask.size)  # only a decode that got as far as the pixels
        return mask

    monkeypatch.setattr(decisions, "decode_mask", counting_decode)

    response = decide(client, token, task.task_id, decision="approve_edited", mask=buffer.getvalue())

    assert response.status_code == 422
    assert "more pixels than the generated image (128x128)" in response.text
    assert decoded == [], "refused from the header: no pixel decoded"


# -- passwords given as hashes ----------------------------------------------------------------------

CHEAP = (16, 8, 1)  # a test's scrypt cost; `hash-password` uses 2**15


def _with_users(parts: ConsoleParts, users: str) -> None:
    parts.console.console = parts.console.console.model_copy(update={"console_users": SecretStr(users)})


def test_a_reviewer_whose_password_is_stored_hashed_logs_in(parts: ConsoleParts) -> None:
    _with_users(parts, f"alice:{hash_password('alice-password', cost=CHEAP)},bob:bob-password")
    client = TestClient(app_for(parts), base_url="http://console.test")
    assert login(client)  # through the form, with the password itself
    assert login(TestClient(app_for(parts), base_url="http://console.test"), "bob")  # plain beside it
    assert check_password(parts.console.console.users(), "alice", "alice-password")
    assert not check_password(parts.console.console.users(), "alice", "alice-passwort")
    # A new hash (the password changed) logs the old session out.
    _with_users(parts, f"alice:{hash_password('new-password', cost=CHEAP)}")
    assert client.get("/api/tasks").status_code == 401


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stored entries check_password hashes against, in order."""
    seen: list[str] = []
    real = security._scrypt_matches

    def counting(stored: str, candidate: bytes) -> bool:
        seen.append(stored)
        return real(stored, candidate)

    monkeypatch.setattr(security, "_scrypt_matches", counting)
    return seen


def test_an_unknown_name_costs_a_hash_too_when_passwords_are_hashed(hashed: list[str]) -> None:
    # Else the answer's time would tell which names exist: a hash takes milliseconds, a miss nanoseconds.
    users = {"alice": hash_password("alice-password", cost=CHEAP)}
    assert not check_password(users, "mallory", "guess")
    assert hashed == [users["alice"]]


def test_a_plain_entry_costs_a_hash_too_when_others_are_hashed(hashed: list[str]) -> None:
    # Plain and hashed entries mix: a known name with a plain password was answered in microseconds,
    # an unknown one after a scrypt hash, so the time told the plain names apart.
    users = {"alice": "alice-password", "bob": hash_password("bob-password", cost=CHEAP)}
    assert not check_password(users, "alice", "guess")
    assert check_password(users, "alice", "alice-password")
    assert hashed == [users["bob"], users["bob"]]


def test_a_malformed_hash_is_refused_at_start_up_naming_the_reviewer() -> None:
    with pytest.raises(ValueError, match=r"reviewer 'alice': a password starting 'scrypt:' must be"):
        parse_users("alice:scrypt:16:8:1:not base64!:x")
    with pytest.raises(ValueError, match="not one this console verifies"):
        parse_users(f"alice:{hash_password('pw', cost=CHEAP).replace('scrypt:16:', 'scrypt:15:')}")


def test_hash_password_reads_stdin_and_prints_an_entry_that_verifies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret: with spaces\n"))
    assert cli_main(["console", "hash-password"]) == 0
    entry = capsys.readouterr().out.strip()
    assert entry.startswith("scrypt:32768:8:1:") and "$" not in entry  # no "$" for compose and shells
    assert check_password(parse_users(f"alice:{entry}"), "alice", "s3cret: with spaces")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli_main(["console", "hash-password"]) == 2


def test_a_locked_session_table_does_not_stall_the_other_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoked-sessions lookup (SQLite, 30 s busy timeout) ran on the event loop: while the table
    was locked, every request of the console waited, the login form and /metrics included."""
    import threading

    parts = build_console(tmp_path)
    released = threading.Event()
    entered = threading.Event()
    real = parts.tasks.session_revoked

    finished = threading.Event()

    def locked(token: str) -> bool:
        entered.set()
        released.wait(timeout=10)  # a lock held for 10 s, unless the test lets go sooner
        finished.set()
        return real(token)

    with TestClient(app_for(parts), base_url="http://console.test") as client:
        login(client)
        monkeypatch.setattr(parts.tasks, "session_revoked", locked)
        answers: list[int] = []
        held = threading.Thread(target=lambda: answers.append(client.get("/").status_code))
        held.start()
        assert entered.wait(timeout=20), "the queue page never looked its session up"
        try:
            assert client.get("/login").status_code == 200
            assert not finished.is_set(), "the login form waited for the locked lookup"
        finally:
            released.set()
            held.join(timeout=30)
        assert answers == [200]
