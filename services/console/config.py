"""Settings of the correction console: environment variables ``SKUFORGE_CONSOLE_*``.

Like the matting stage's, they sit beside the shared ``Settings`` (Kafka, object store, limits),
with a ``console_`` prefix under ``SKUFORGE_`` so ``describe_validation_error`` names the variables.
Secrets are ``SecretStr``: ``skuforge config`` never prints them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from schemas.flow import CONSOLE
from services.console.security import MAX_PASSWORD_CHARS, SCRYPT_PREFIX, parse_scrypt
from services.console.tasks import ACCEPTED_BY, WITHDRAWN_BY
from shared.argtypes import file_problem
from shared.config import SETTINGS_CONFIG, name_or_unset

_REVIEWER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# The names the console itself decides under (``decided_by`` and the audit): a reviewer of one of them, in
# any case, would have decisions that read as the gate's acceptance or a withdrawal.
SYSTEM_DECIDERS = (ACCEPTED_BY, WITHDRAWN_BY)
_USERS_HELP = "expected 'name:password[,name:password...]' (names: letters, digits, '.', '_', '@', '-')"


def parse_users(text: str) -> dict[str, str]:
    """``"alice:s3cret,bob:other"`` → ``{"alice": "s3cret", "bob": "other"}``; ValueError says why not.

    A password may be given as its hash (``skuforge console hash-password``: ``scrypt:...``), checked here.
    """
    users: dict[str, str] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, password = entry.partition(":")
        # fullmatch: match's `$` also matched before a final newline, and "alice\n" was another reviewer.
        if not sep or not _REVIEWER.fullmatch(name) or not password:
            raise ValueError(_USERS_HELP)
        if name in users:
            raise ValueError(f"reviewer {name!r} is listed twice")
        # Names are ASCII (_REVIEWER), so no Unicode form of one is another; case is what is left. Login
        # keeps case, but the audit, the queue's "claimed (alice)" and Label Studio show both as one person.
        same = next((known for known in users if known.lower() == name.lower()), None)
        if same is not None:
            raise ValueError(
                f"reviewer {name!r} differs from reviewer {same!r} only in case; a person reads both as"
                " one reviewer: give one of them another name"
            )
        if name.lower() in SYSTEM_DECIDERS:
            raise ValueError(
                f"reviewer {name!r}: the console itself decides as {' and '.join(map(repr, SYSTEM_DECIDERS))}"
                " (tasks the gate accepted, photos withdrawn); give the reviewer another name"
            )
        if password.startswith(SCRYPT_PREFIX):
            try:
                parse_scrypt(password)
            except ValueError as exc:
                raise ValueError(f"reviewer {name!r}: {exc}") from None
        elif len(password) > MAX_PASSWORD_CHARS:
            raise ValueError(
                f"reviewer {name!r}: the password is {len(password)} characters; the login form takes "
                f"at most {MAX_PASSWORD_CHARS}"
            )
        users[name] = password
    return users


class ConsoleSettings(BaseSettings):
    """Where the console keeps its tasks, who may log in, and how long a claim lasts."""

    model_config = SETTINGS_CONFIG

    console_db_path: str = Field(
        default="./var/console/tasks.sqlite3",
        min_length=1,
        description="SQLite task table (WAL mode); a restart loses nothing that was consumed",
    )
    console_host: str = Field(
        default="127.0.0.1",
        min_length=1,  # empty would bind every interface; write 0.0.0.0 for that
        description="address the console's web server binds",
    )
    console_port: int = Field(default=8087, ge=0, le=65535, description="port of the console's web pages")
    console_users: SecretStr | None = Field(
        default=None,
        description="reviewers and passwords, 'name:password,name2:password2' (a password may be its "
        "'scrypt:...' hash from `skuforge console hash-password`); required to serve",
    )
    console_session_secret: SecretStr | None = Field(
        default=None,
        description="key that signs login cookies; unset = random per process (restart logs everyone out)",
    )
    console_session_ttl_s: int = Field(
        default=12 * 3600,
        ge=60,
        le=30 * 86400,
        description="a login lasts this long, then the reviewer logs in again",
    )
    console_cookie_secure: bool = Field(
        default=False, description="mark cookies Secure (set it when the console is served over HTTPS)"
    )
    console_lease_s: float = Field(
        default=300.0,
        ge=5.0,
        le=86400.0,  # the item page renews every lease/3: a browser timer overflows past about 74 days
        description="a claim lasts this long unless the item page renews it; then the item returns",
    )
    console_idle_s: float = Field(
        default=900.0,
        ge=5.0,
        le=86400.0,
        description="an item page with no key press or click for this long stops renewing its claim, so "
        "a tab left open does not hold the item for good",
    )
    console_intake: bool = Field(
        default=True,
        description="consume correction.pending into the task table, and gate.accepted (closing the tasks "
        "of items the gate accepts on a replay), inside `serve console` (a thread)",
    )
    console_max_clock_ahead_s: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="a correction.pending or gate.accepted produced more than this far ahead of the "
        "intake's clock is dead-lettered (clock_skew): its time orders the gate's verdicts of an item, so "
        "it would outrank every later one",
    )
    console_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            f"port of /metrics, /healthz, /readyz; unset = SKUFORGE_METRICS_PORT or {CONSOLE.metrics_port}"
        ),
    )

    @field_validator("console_db_path", "console_host", mode="before")
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @field_validator("console_users")
    @classmethod
    def _users_parse(cls, value: SecretStr | None) -> SecretStr | None:
        # Separators only ("," from a template with no entries) named nobody: every stage of `skuforge
        # up` started, then the console refused to serve with no reviewer.
        if value is not None and not parse_users(value.get_secret_value()):
            raise ValueError(f"names no reviewer; {_USERS_HELP}")
        return value

    @field_validator("console_db_path")
    @classmethod
    def _db_path_can_be_a_file(cls, value: str) -> str:
        if (problem := file_problem(Path(value), "tasks.sqlite3")) is not None:
            raise ValueError(f"{value}: {problem}")
        return value

    @field_validator("console_session_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes: it signs the login cookies")
        return value

    def users(self) -> dict[str, str]:
        """Reviewer name → password; empty when none is configured."""
        return parse_users(self.console_users.get_secret_value()) if self.console_users else {}
