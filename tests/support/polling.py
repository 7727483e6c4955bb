"""Waiting, in a test, for what another thread or process does: one polling loop for every test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, condition: Callable[[], T], timeout_s: float = 90.0, every_s: float = 0.1) -> T:
    """Returns ``condition()``'s first truthy value, asking every ``every_s``; fails the test, naming
    ``what``, the time waited and the last value, if none comes within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        time.sleep(every_s)
