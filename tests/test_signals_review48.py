"""Review 48 of ``shared.signals``: a stop that comes as a block ends, before its handlers are put back."""

from __future__ import annotations

import inspect
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any

import pytest

from shared import signals
from shared.signals import held_signals, stopped_as_interrupt, stops_wait_for_clean_up
from tests.support.signals import stop_handlers, stops_as_from_a_shell


def _stop_as_the_restore_is_called(
    monkeypatch: pytest.MonkeyPatch, stop: int, *, first_call_only: bool = False
) -> None:
    """``stop`` comes as the block's ``finally`` calls ``_restore`` (only as it first calls it where
    ``first_call_only``): its Python handler (the block's, or the caller's for a signal the block set
    none for) runs at that call, as a signal's does at a function's start (here at once), before any of
    the block's handlers is put back."""
    restore = signals._restore
    calls: list[int] = []

    def stop_then_restore(*args: Any, **kwargs: Any) -> None:
        calls.append(stop)
        if len(calls) == 1 or not first_call_only:
            signal.raise_signal(stop)
        restore(*args, **kwargs)

    monkeypatch.setattr(signals, "_restore", stop_then_restore)


def _stopped_as_it_ends_with_every_handler_back(
    block: Callable[[], AbstractContextManager[object]],
    monkeypatch: pytest.MonkeyPatch,
    stop: int,
    *,
    first_call_only: bool = False,
) -> None:
    """From a shell's handlers, ``block`` stopped by ``stop`` as it calls ``_restore``
    (``_stop_as_the_restore_is_called``) ends in KeyboardInterrupt and leaves every handler as it was."""
    before = stops_as_from_a_shell()
    _stop_as_the_restore_is_called(monkeypatch, stop, first_call_only=first_call_only)
    with pytest.raises(KeyboardInterrupt), block():
        pass
    monkeypatch.undo()
    assert stop_handlers() == before


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
    _stopped_as_it_ends_with_every_handler_back(block, monkeypatch, stop)


def _interrupted(signum: int, frame: object) -> None:
    """A caller's own handler for a signal no block sets one for: it stops the process as Ctrl-C does."""
    raise KeyboardInterrupt


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
    caller_s = signal.signal(signal.SIGUSR1, _interrupted)
    try:
        _stopped_as_it_ends_with_every_handler_back(block, monkeypatch, stop, first_call_only=True)
    finally:
        signal.signal(signal.SIGUSR1, caller_s)


def _second_ctrl_c_as_the_restore_loops_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C comes just after the block puts Ctrl-C's handler back (that handler raises there, caught by
    ``_restore``), and another as ``_restore`` goes back for the handlers left: at its outer loop's jump
    back, outside its ``try``, where a signal's handler runs too (here raised by a line trace)."""
    real_set = signal.signal
    came: list[int] = []

    def set_then_stop(signum: int, handler: Any) -> Any:
        before = real_set(signum, handler)
        if signum == signal.SIGINT and not came:
            came.append(signum)
            signal.raise_signal(signal.SIGINT)
        return before

    restore = signals._restore.__code__
    outer_loop = restore.co_firstlineno + inspect.getsource(signals._restore).splitlines().index(
        "    while left:"
    )

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code is not restore:
            return None
        if event == "line" and frame.f_lineno == outer_loop and came == [signal.SIGINT]:
            came.append(signal.SIGINT)
            raise KeyboardInterrupt  # the second Ctrl-C's handler (default_int_handler), run there
        return trace

    monkeypatch.setattr(signal, "signal", set_then_stop)
    sys.settrace(trace)


@pytest.mark.parametrize(
    "block", [held_signals, stops_wait_for_clean_up], ids=["held_signals", "stops_wait_for_clean_up"]
)
def test_two_ctrl_c_while_a_block_puts_its_handlers_back_leave_every_handler_back(
    block: Callable[[], AbstractContextManager[object]],
    monkeypatch: pytest.MonkeyPatch,
    restore_signal_handlers: None,
) -> None:
    # Ctrl-C's handler is put back first: a Ctrl-C there was caught and the rest put back after it, but
    # a second one raised out of _restore at its loop back, and SIGTERM's and SIGHUP's handlers stayed
    # the block's: held_signals' swallowed every later SIGTERM.
    before = stops_as_from_a_shell()
    try:
        with pytest.raises(KeyboardInterrupt), block():
            _second_ctrl_c_as_the_restore_loops_back(monkeypatch)
    finally:
        sys.settrace(None)
        monkeypatch.undo()
    assert stop_handlers() == before
