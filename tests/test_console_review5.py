"""Reviewers who read as one person, a queue raced to its end, anonymous Label Studio annotators."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.console.config import parse_users
from skuforge_cli.main import main as cli_main


@pytest.mark.parametrize(
    ("users", "refused"),
    [
        ("alice:a-long-password,Alice:another-password", "'Alice'"),
        ("ALICE:a-long-password,bob:pw,alice:another-password", "'alice'"),
        # `$` also matched before a final newline: "alice\n" was a second reviewer beside "alice".
        ("alice:a-long-password,alice\n:another-password", "expected 'name:password"),
    ],
)
def test_reviewers_whose_names_read_as_one_are_refused_at_start_up(
    users: str,
    refused: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`Alice` and `alice` were two reviewers, with two passwords, whose decisions the audit, the queue's
    "claimed (alice)" and Label Studio's export showed under names a person reads as one."""
    with pytest.raises(ValueError, match=refused):
        parse_users(users)
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", users)
    assert cli_main(["serve", "console"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_CONSOLE_USERS: Value error, " in err and refused in err, err
    assert "invalid configuration" in err and "another-password" not in err and "Traceback" not in err


def test_names_are_ascii_so_no_unicode_form_of_a_reviewer_is_a_second_one() -> None:
    # NFKC folds the full-width spelling of "alice" into "alice": the name rule refuses it already.
    with pytest.raises(ValueError, match="expected 'name:password"):
        parse_users("alice:a-long-password,\uff41\uff4c\uff49\uff43\uff45:another-password")
    assert parse_users("alice:pw1,bob:pw2") == {"alice": "pw1", "bob": "pw2"}
