"""Review 48 of ``shared.signals``: a stop that comes as a block ends, before its handlers are put back."""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from shared import signals
from shared.signals import stopped_as_interrupt, stops_wait_for_clean_up
from tests.support.signals import STOPS


def _stop_as_the_restore_is_called(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """``stop`` comes as the block's ``finally`` calls ``_restore``: its Python handler (still the block's)
    runs at that call, as a signal's does at a function's start (here at once)."""
    restore = signals._restore

    def stop_then_restore(*args: Any, **kwargs: Any) -> None:
        signal.raise_signal(stop)
        restore(*args, **kwargs)

    monkeypatch.setattr(signals, "_restore", stop_then_restore)


@pytest.mark.parametrize(
    ("block", "stop"),
    [(stopped_as_interrupt, signal.SIGTERM), (stops_wait_for_clean_up, signal.SIGINT)],
    ids=["stopped_as_interrupt", "stops_wait_for_clean_up"],
)
def test_a_stop_as_a_block_ends_still_stops_it_and_leaves_every_handler_back(
    block: Callable[[], AbstractContextManager[object]],
    stop: int,
    monkeypatch: pytest.MonkeyPatch,
    restore_signal_handlers: None,
) -> None:
    # The block's handler raised where the stop landed, before _restore's first put-back, so none was
    # put back: stopped_as_interrupt's turned every later SIGTERM into an exception, and
    # stops_wait_for_clean_up's, which had marked the block failing, held every later Ctrl-C for good.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    before = {signum: signal.getsignal(signum) for signum in STOPS}
    _stop_as_the_restore_is_called(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt), block():
        pass
    monkeypatch.undo()
    assert {signum: signal.getsignal(signum) for signum in STOPS} == before


def _interrupted(signum: int, frame: object) -> None:
    """A caller's own handler for a signal no block sets one for: it stops the process as Ctrl-C does."""
    raise KeyboardInterrupt


def _other_stop_as_the_restore_is_called(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """``stop``, a signal the block set no handler for, comes as the block's ``finally`` first calls
    ``_restore``: its own handler raises there, before any of the block's is put back."""
    restore = signals._restore
    calls: list[int] = []

    def stop_then_restore(*args: Any, **kwargs: Any) -> None:
        calls.append(stop)
        if len(calls) == 1:
            signal.raise_signal(stop)
        restore(*args, **kwargs)

    monkeypatch.setattr(signals, "_restore", stop_then_restore)


@pytest.mark.parametrize(
    ("block", "stop"),
    [(stopped_as_interrupt, signal.SIGINT), (stops_wait_for_clean_up, signal.SIGUSR1)],
    ids=["stopped_as_interrupt", "stops_wait_for_clean_up"],
)
def test_another_stop_as_a_block_ends_leaves_every_handler_back(
    block: Callable[[], AbstractContextManager[object]],
    stop: int,
    monkeypatch: pytest.MonkeyPatch,
    restore_signal_handlers: None,
) -> None:
    # Raised before _restore put any handler back, it left the block's for good, marked as ending: every
    # later SIGTERM or Ctrl-C was noted (held) for a block long done, and so swallowed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    before = {signum: signal.getsignal(signum) for signum in STOPS}
    caller_s = signal.signal(signal.SIGUSR1, _interrupted)
    try:
        _other_stop_as_the_restore_is_called(monkeypatch, stop)
        with pytest.raises(KeyboardInterrupt), block():
            pass
        monkeypatch.undo()
        assert {signum: signal.getsignal(signum) for signum in STOPS} == before
    finally:
        signal.signal(signal.SIGUSR1, caller_s)
