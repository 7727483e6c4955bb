"""Review 47 of the small shared libraries: signals, commands, model cache."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from shared.signals import held_signals, stopped_as_interrupt, stops_wait_for_clean_up

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture
def handlers_back() -> Iterator[None]:
    """Every stop's handler as it was before the test."""
    saved = {signum: signal.getsignal(signum) for signum in STOPS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _stop_right_after_the_first_restore(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """``stop`` comes just after a block puts its first handler back, before it puts the next: its Python
    handler (the one just put back) runs at the next call, as a signal's does (here at once)."""
    real_set = signal.signal
    came: list[int] = []

    def set_then_stop(signum: int, handler: Any) -> Any:
        before = real_set(signum, handler)
        if not came:
            came.append(signum)
            signal.raise_signal(stop)
        return before

    monkeypatch.setattr(signal, "signal", set_then_stop)


@pytest.mark.parametrize(
    "block",
    [held_signals, stops_wait_for_clean_up, stopped_as_interrupt],
    ids=["held_signals", "stops_wait_for_clean_up", "stopped_as_interrupt"],
)
def test_a_stop_between_two_handler_restores_leaves_every_handler_back(
    block: Callable[[], AbstractContextManager[object]],
    monkeypatch: pytest.MonkeyPatch,
    handlers_back: None,
) -> None:
    # The block put its handlers back one at a time: a Ctrl-C whose handler was back already raised
    # there, and the handlers after it stayed the block's for good (``held_signals``' then swallowed
    # every later SIGTERM, ``stopped_as_interrupt``'s turned a later SIGHUP into an exception).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    before = {signum: signal.getsignal(signum) for signum in STOPS}
    with pytest.raises(KeyboardInterrupt), block():
        _stop_right_after_the_first_restore(monkeypatch, signal.SIGINT)
    monkeypatch.undo()
    assert {signum: signal.getsignal(signum) for signum in STOPS} == before
