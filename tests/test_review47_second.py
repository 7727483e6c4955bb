"""Second look at review 47's changes: what they introduced or left."""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator
from typing import Any

import pytest

from shared.signals import held_signals
from tests.support.signals import STOPS


def test_a_handler_that_cannot_be_put_back_is_refused_not_retried_for_ever(
    monkeypatch: pytest.MonkeyPatch, restore_signal_handlers: None
) -> None:
    # A block entered on the main thread and left on another (a generator holding it, closed there):
    # signal.signal refuses every put-back there (ValueError, for good), and _restore, which retries a
    # handler a stop interrupted, retried the same one for ever, the thread spinning without a word.
    real_set = signal.signal
    refused_off_main: list[int] = []

    def set_counting(signum: int, handler: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            refused_off_main.append(signum)
            if len(refused_off_main) > 20:  # the retries would not end: let the block finish
                return None
        return real_set(signum, handler)

    def holding() -> Generator[None, None, None]:
        with held_signals():
            yield

    for signum in STOPS:  # as a shell leaves them: under nohup, or started in the background (CI's
        signal.signal(signum, signal.SIG_DFL)  # runner), some are ignored, and the block leaves those be
    block = holding()
    next(block)
    monkeypatch.setattr(signal, "signal", set_counting)
    raised: list[BaseException] = []

    def close_it() -> None:
        try:
            block.close()
        except BaseException as exc:
            raised.append(exc)

    closing = threading.Thread(target=close_it)
    closing.start()
    closing.join()
    monkeypatch.undo()
    assert [type(exc) for exc in raised] == [ValueError]
    assert sorted(refused_off_main) == sorted(STOPS)  # each tried once
