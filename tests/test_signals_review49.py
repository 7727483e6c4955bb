"""Review 49 of ``shared.signals``: a stop that comes as the ``with`` statement leaves a block.

The ``with`` statement leaves a block by calling contextlib's ``__exit__``, a Python function: a
signal's Python handler runs at its start, before it resumes the block's generator, so before the
block's ``finally`` marks it ending. The block's handler raised there, out of ``__exit__``: its
``finally`` did not run, and its handlers stayed set while the stop was handled (until the generator
was collected, with the exception that held it). A second Ctrl-C then, while a command cleaned up after
the first, was held by ``stops_wait_for_clean_up``'s handler for a block long done. Here the stop is
raised at that very point by a profile hook (no timing: the hook runs at ``__exit__``'s call).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import FrameType

import pytest

from shared.signals import stopped_as_interrupt, stops_wait_for_clean_up
from tests.support.signals import stop_handlers, stops_as_from_a_shell

_CONTEXTMANAGER_EXIT = contextlib._GeneratorContextManager.__exit__.__code__


def _stop_as_the_with_statement_leaves(stop: int) -> None:
    """``stop`` comes at the call of the next contextlib ``__exit__``: as the block ends."""

    def at_exit(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is _CONTEXTMANAGER_EXIT:
            sys.setprofile(None)
            signal.raise_signal(stop)

    sys.setprofile(at_exit)


@pytest.mark.parametrize(
    ("block", "stop"),
    [(stopped_as_interrupt, signal.SIGTERM), (stops_wait_for_clean_up, signal.SIGINT)],
    ids=["stopped_as_interrupt", "stops_wait_for_clean_up"],
)
def test_a_stop_as_the_with_statement_leaves_a_block_finds_every_handler_back(
    block: Callable[[], AbstractContextManager[object]],
    stop: int,
    restore_signal_handlers: None,
) -> None:
    before = stops_as_from_a_shell()
    handlers_as_stopped: dict[signal.Signals, object] = {}
    try:
        with block():
            _stop_as_the_with_statement_leaves(stop)
    except KeyboardInterrupt:
        handlers_as_stopped = dict(stop_handlers())  # where a command cleans up after the stop
    finally:
        sys.setprofile(None)
    assert handlers_as_stopped == before
