"""Login sessions and cross-site request protection for the console.

* **Login**: reviewer name and password, checked against ``SKUFORGE_CONSOLE_USERS`` in constant
  time; a name with a few failed logins in a minute is refused for the rest of it (``LoginThrottle``).
  The session is an HMAC-signed cookie (HttpOnly, SameSite=Strict, Secure when configured) carrying
  the reviewer, an expiry and the session's CSRF token; nothing is served without it.
* **CSRF**: every state-changing request must carry the session's token, in the ``X-CSRF-Token``
  header (JavaScript) or a ``csrf_token`` form field (forms), and, when the browser sends an
  ``Origin``, come from the console's own origin. The login form, which has no session yet, uses
  a double-submit nonce instead (cookie + form field).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

SESSION_COOKIE = "skuforge_console"
LOGIN_COOKIE = "skuforge_console_login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
# Whole (fullmatch): with match, `$` also matched before a final newline, and "/x\n" was a target.
_SAFE_NEXT = re.compile(r"/(?!/)[A-Za-z0-9/_.?=&%-]*")
# The longest address the login form carries on (its ``next`` field): a longer one goes to the queue, as
# the form's POST takes no more (a link of 600 characters led to a login that always answered a 422).
MAX_NEXT_CHARS = 500
# The longest password the login form takes: a longer one (plain or hashed) could never log in.
MAX_PASSWORD_CHARS = 256


# The count the names share that a full table of refused names has no room for ("" is no reviewer's
# name: a login form with an empty name is refused before it is counted).
OVERFLOW = ""


@dataclass
class LoginThrottle:
    """Failed logins per reviewer name: after ``max_failures`` of them within ``window_s``, that name is
    refused until the oldest leaves the window. Guessing slows to a few tries a minute per name, and a
    reviewer who mistyped is not locked out for long (nor for long by someone trying their name).

    In memory: the console is one process (the chart runs one pod). ``max_names`` bounds the table,
    since names are whatever a client sends. A full table makes room by forgetting the name that
    failed longest ago among those not refused now; a refused name is never forgotten before its
    failures leave the window, or flooding the table with made-up names would clear a real
    reviewer's count and let the guessing go on. When every name in a full table is refused, the
    names not in it share one count (``OVERFLOW``): under such a flood new names are refused
    together, and none gets more than ``max_failures`` tries a window. Known and unknown names are
    counted alike, so the throttle does not tell which names exist.
    """

    max_failures: int = 5
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    max_names: int = 10_000
    _failures: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    # Logins run on the server's thread pool: the table is changed from many threads at once.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._failures)

    def retry_after_s(self, reviewer: str) -> float:
        """Seconds until ``reviewer`` may try again; 0 when a login may be tried now."""
        with self._lock:
            return self._retry_after_s(reviewer)

    def begin_attempt(self, reviewer: str) -> float:
        """Seconds until ``reviewer`` may try again (the attempt is refused), or 0: the attempt is then
        counted as a failure at once, and ``succeeded`` clears it. Counted only after the password
        check (tens of milliseconds of scrypt), 40 guesses sent together all passed the check first."""
        with self._lock:
            wait = self._retry_after_s(reviewer)
            if wait == 0.0:
                self._failed(reviewer)
            return wait

    def failed(self, reviewer: str) -> None:
        """Count a failed login of ``reviewer``."""
        with self._lock:
            self._failed(reviewer)

    def succeeded(self, reviewer: str) -> None:
        """A successful login clears the name's failures."""
        with self._lock:
            self._failures.pop(reviewer, None)

    def _retry_after_s(self, reviewer: str) -> float:
        failures = self._recent(self._key(reviewer))
        if len(failures) < self.max_failures:
            return 0.0
        return max(0.0, failures[0] + self.window_s - self.clock())

    def _failed(self, reviewer: str) -> None:
        self._forget_old()
        if reviewer not in self._failures and len(self._failures) >= self.max_names:
            self._forget_one_not_refused()
        key = self._key(reviewer)
        failures = self._recent(key)
        failures.append(self.clock())
        self._failures[key] = failures

    def _key(self, reviewer: str) -> str:
        """The name's own count while it is in the table or there is room; else the shared one."""
        if reviewer in self._failures or len(self._failures) < self.max_names:
            return reviewer
        return OVERFLOW

    def _forget_one_not_refused(self) -> None:
        """Forget the name that failed longest ago among those a login may be tried for now."""
        for name, failures in self._failures.items():  # the name that failed longest ago first
            if name != OVERFLOW and len(failures) < self.max_failures:
                del self._failures[name]
                return

    def _recent(self, reviewer: str) -> deque[float]:
        failures = self._failures.pop(reviewer, deque())  # re-inserted by ``failed``: newest last
        while failures and failures[0] <= self.clock() - self.window_s:
            failures.popleft()
        if failures:
            self._failures[reviewer] = failures
        return failures

    def _forget_old(self) -> None:
        cutoff = self.clock() - self.window_s
        for name in [name for name, failures in self._failures.items() if failures[-1] <= cutoff]:
            del self._failures[name]


@dataclass(frozen=True)
class Session:
    """A logged-in reviewer."""

    reviewer: str
    csrf_token: str
    expires_at: float
    # The credential the session was opened with (``SessionSigner.credential_tag``): a reviewer removed
    # from SKUFORGE_CONSOLE_USERS, or whose password changed, is logged out by it.
    credential: str = ""


class SessionSigner:
    """Makes and checks session cookies signed with ``secret``."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    def credential_tag(self, reviewer: str, password: str) -> str:
        """A short keyed digest of a reviewer's current credential (no use without the secret)."""
        return self._mac(f"credential\0{reviewer}\0{password}".encode())[:32]

    def note_tag(self, session: Session, note: str) -> str:
        """A keyed digest that binds a note the server puts in a link (the queue page's refusal) to
        ``session``: a page shows a note only beside its tag, so the text of a crafted link is not
        shown as the console's, nor a note made for one session in another."""
        return self._mac(f"note\0{session.csrf_token}\0{note}".encode())[:32]

    def is_note_for(self, session: Session, note: str, tag: str) -> bool:
        """Whether ``tag`` is the server's ``note_tag`` of ``note`` for ``session``."""
        # Bytes, not str: compare_digest raises TypeError on a non-ASCII str (a crafted tag).
        return hmac.compare_digest(tag.encode("utf-8", "replace"), self.note_tag(session, note).encode())

    def issue(self, reviewer: str, now: float | None = None, *, credential: str = "") -> tuple[str, Session]:
        """A new cookie value and the session it carries (with a fresh CSRF token)."""
        session = Session(
            reviewer=reviewer,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=(now if now is not None else time.time()) + self.ttl_s,
            credential=credential,
        )
        fields = {"r": session.reviewer, "c": session.csrf_token, "e": session.expires_at, "g": credential}
        body = base64.urlsafe_b64encode(json.dumps(fields).encode())
        return f"{body.decode()}.{self._mac(body)}", session

    def verify(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie, or None when it is missing, forged, malformed or expired."""
        if not cookie or "." not in cookie:
            return None
        body_text, _, mac = cookie.rpartition(".")
        body = body_text.encode()
        # Bytes, not str: compare_digest raises TypeError on a non-ASCII str (a garbage cookie).
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body))
            session = Session(
                reviewer=str(data["r"]),
                csrf_token=str(data["c"]),
                expires_at=float(data["e"]),
                credential=str(data.get("g", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= (now if now is not None else time.time()):
            return None
        return session


# A password given as its scrypt hash (``skuforge console hash-password``): ``scrypt:N:r:p:salt:key``,
# salt and key URL-safe base64. No "$": compose files and shells would read it as a variable. Cost of
# the default (2**15, 8, 1): 32 MiB and tens of milliseconds.
SCRYPT_PREFIX = "scrypt:"
# [0-9], not \d: \d and int() read any script's digits ("١٦" as 16), which hash-password never writes.
_SCRYPT = re.compile(r"scrypt:([0-9]+):([0-9]+):([0-9]+):([A-Za-z0-9_-]+={0,2}):([A-Za-z0-9_-]+={0,2})")
_SCRYPT_DEFAULT = (2**15, 8, 1)
_SCRYPT_MAXMEM = 256 * 1024 * 1024


def hash_password(
    password: str, *, salt: bytes | None = None, cost: tuple[int, int, int] = _SCRYPT_DEFAULT
) -> str:
    """``password`` as a ``scrypt:...`` entry for ``SKUFORGE_CONSOLE_USERS`` (a fresh salt each time)."""
    n, r, p = cost
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    encode = base64.urlsafe_b64encode
    return f"{SCRYPT_PREFIX}{n}:{r}:{p}:{encode(salt).decode()}:{encode(key).decode()}"


def parse_scrypt(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """``(n, r, p, salt, key)`` of a ``scrypt:`` entry; ValueError says what is wrong with it."""
    match = _SCRYPT.fullmatch(stored)
    if match is None:
        raise ValueError(
            "a password starting 'scrypt:' must be 'scrypt:N:r:p:salt:key' (skuforge console hash-password)"
        )
    n, r, p = (int(group) for group in match.groups()[:3])
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or 128 * n * r * p > _SCRYPT_MAXMEM // 2:
        raise ValueError(f"scrypt cost N={n}, r={r}, p={p} is not one this console verifies (N a power of 2)")
    salt, key = (base64.urlsafe_b64decode(group) for group in match.groups()[3:])
    if len(key) < 16:
        raise ValueError("the scrypt key is shorter than 16 bytes")
    return n, r, p, salt, key


def check_password(users: dict[str, str], reviewer: str, password: str) -> bool:
    """Whether ``password`` is ``reviewer``'s; compares in constant time, also for unknown names.

    A stored ``scrypt:`` entry is verified by hashing ``password`` with its salt and cost. When any
    reviewer's password is stored so, an unknown name and a name with a plain entry pay for one scrypt
    hash too, so the answer's time does not tell which names exist.
    """
    expected = users.get(reviewer)
    candidate = password.encode()
    if expected is not None and expected.startswith(SCRYPT_PREFIX):
        return _scrypt_matches(expected, candidate)
    hashed = next((stored for stored in users.values() if stored.startswith(SCRYPT_PREFIX)), None)
    if hashed is not None:
        _scrypt_matches(hashed, candidate)
    if expected is None:
        hmac.compare_digest(candidate, candidate)
        return False
    return hmac.compare_digest(candidate, expected.encode())


def _scrypt_matches(stored: str, candidate: bytes) -> bool:
    n, r, p, salt, key = parse_scrypt(stored)
    derived = hashlib.scrypt(candidate, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=len(key))
    return hmac.compare_digest(derived, key)


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two tokens; missing is never a match."""
    if not expected or not given or not given.isascii():
        # Not ASCII: a lone surrogate (a utf-7 form field) made encode() raise, and the check a 500.
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def same_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """Whether a request's ``Origin`` header (if any) is the console's own origin."""
    if origin is None:
        return True  # same-origin GET-less forms in some browsers; the token is still required
    return origin == f"{scheme}://{host}"


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (other sites, odd characters, an address longer
    than the login form carries, ``MAX_NEXT_CHARS``) goes to '/'."""
    if target and len(target) <= MAX_NEXT_CHARS and _SAFE_NEXT.fullmatch(target):
        return target
    return "/"
