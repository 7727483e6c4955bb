"""SIGTERM and SIGHUP unwind a command as Ctrl-C does.

By default they end the process where it stands: `kill`, `timeout`, a cancelled CI job or an SSH
session that dropped skipped whatever a command does on Ctrl-C (``skuforge ingest`` removes its checked
photos from TMPDIR; ``skuforge dlq replay`` marks the records Kafka acknowledged, which a later replay
would otherwise send again). Inside ``stopped_as_interrupt`` they raise ``Stopped``, a
``KeyboardInterrupt``, so the same ``except KeyboardInterrupt`` handles all three; ``signal_number``
gives the exit status's signal (128 + it, 130 for Ctrl-C). ``held_signals`` holds all three off a step
that must finish (the replay's markers), for the caller to stop after it; ``stops_wait_for_clean_up``
lets them stop a block until it fails, and holds them off its clean-up from the failure's first
instruction (an export's staging folder).

The exception is raised in whatever Python code runs on the main thread when the signal comes, and
code that catches ``BaseException`` there loses it: kafka-python's event loop does so for its tasks,
which is why ``shared.bus.make_producer`` bootstraps the producer off the main thread.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "FailurePath",
    "SignalSafeEvent",
    "Stopped",
    "failure_before",
    "hang_up_as_sigterm",
    "heard",
    "held_signals",
    "raise_stopped",
    "signal_number",
    "stopped_as_interrupt",
    "stopped_how",
    "stops_wait_for_clean_up",
]


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the process stands, so it unwinds as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalSafeEvent:
    """``threading.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``, for a flag a signal handler sets.

    ``threading.Event.set`` takes the event's lock, a plain ``Lock``, which ``wait`` holds for a few
    instructions on its way in and out; a handler runs on the main thread between any two of them, so a
    signal landing while the main thread waits on the same event made the handler wait forever for a lock
    its own thread held (``skuforge up`` hung on a second Ctrl-C that way). Here ``set`` only stores a
    bool, and ``wait`` polls it every ``step_s`` (a signal cuts its sleep short: PEP 475 resumes it for
    what is left of ``step_s`` at most).
    """

    def __init__(self, step_s: float = 0.02) -> None:
        self._flag = False
        self._step_s = step_s

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Until set, or ``timeout`` seconds passed; whether it is set (as ``threading.Event.wait``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._flag:
            left = self._step_s if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._step_s, left))
        return True


def raise_stopped(signum: int, frame: object) -> None:
    """A signal handler that raises ``Stopped``, so ``finally`` clauses run as on Ctrl-C."""
    raise Stopped(signum)


def heard(signum: int) -> bool:
    """Whether a server or stage that stops on ``signum`` should set its handler for it: False only for a
    SIGHUP ignored now (``nohup``, which asks the process to outlive its terminal); any other signal,
    even one ignored, is heard. (``stopped_as_interrupt`` replaces only default handlers: a command
    leaves a caller's handler, and any signal it ignores, alone.)"""
    return signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN


@contextlib.contextmanager
def stopped_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Stopped`` inside the block. A signal already ignored (``nohup``)
    stays ignored, and outside the main thread (where no handler can be set) nothing changes."""
    ending = _Ending()
    block = sys._getframe()  # this generator's: how ``_leaving`` knows the with statement's exit of it

    def stop(signum: int, frame: FrameType | None) -> None:
        if ending.over or _leaving(frame, block):
            ending.came.append(signum)
            return
        raise Stopped(signum)

    previous: dict[int, Any] = {}
    failure: BaseException | None = None
    try:
        _set_handlers(stop, (signal.SIGTERM, signal.SIGHUP), previous, replaces=_only_default)
        yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        ending.over = True  # first, before any call (``_Ending``)
        try:
            try:
                _restore(previous)
            except (KeyboardInterrupt, SystemExit):  # cut short by another signal's handler (``_Ending``)
                _restore(previous)
                raise
        finally:
            ending.over = False  # a handler not put back even so stops again, not notes (``_Ending``)
        if ending.came and not isinstance(failure, KeyboardInterrupt):  # one stop is enough
            raise Stopped(ending.came[0])  # as it was raised a moment before, inside the block


@contextlib.contextmanager
def held_signals() -> Iterator[list[int]]:
    """Ctrl-C, SIGTERM and SIGHUP do not interrupt the block: each that comes is added to the list it
    gives, for the caller to stop once the block is done. For a step an interrupt must not cut short
    (``skuforge dlq replay`` marking the records Kafka acknowledged). A signal ignored stays ignored,
    and outside the main thread (where no handler can be set) nothing changes."""
    came: list[int] = []

    def hold(signum: int, frame: object) -> None:
        came.append(signum)

    previous: dict[int, Any] = {}
    try:
        _set_handlers(hold, _STOPS, previous, replaces=_not_ignored)
        yield came
    finally:
        try:
            _restore(previous)
        except (KeyboardInterrupt, SystemExit):  # cut short by a second stop (``_restore``)
            _restore(previous)
            raise


class FailurePath:
    """What ``stops_wait_for_clean_up`` gives its block: ``failing``, which the block's failure path sets
    as its first statement, and the stops held since."""

    def __init__(self) -> None:
        self.failing = False
        self.held: list[int] = []


@contextlib.contextmanager
def stops_wait_for_clean_up() -> Iterator[FailurePath]:
    """Ctrl-C, SIGTERM and SIGHUP stop the block as they would have (``Stopped`` or ``KeyboardInterrupt``
    raised, the process ended where no handler is set) until it fails: by one of them, or where its failure
    path sets ``failing``. From then on they wait until the block is done, however it ends (its clean-up
    is not cut short); then the first that came is delivered as it would have been, raised from the
    failure (``failure_before``), unless a stop ends the block already (one is enough). For a clean-up an
    interrupt must not cut short (an export's staging folder). One that comes as the block ends, while its
    handlers are put back, waits for them too (``_Ending``). A signal ignored stays ignored, and outside
    the main thread nothing changes.

    The failure path sets ``failing = True`` first, before any call: CPython runs a signal's Python handler
    only at a call, a function's start or a loop's jump back, so none runs between the exception's arrival
    and that assignment. Holding the signals from a call there instead (a ``with`` statement) let one that
    came in those few instructions stop the block before its clean-up began.
    """
    path = FailurePath()
    previous: dict[int, Any] = {}
    block = sys._getframe()  # this generator's: how ``_leaving`` knows the with statement's exit of it

    def stop_or_hold(signum: int, frame: FrameType | None) -> None:
        if path.failing or _leaving(frame, block):
            path.held.append(signum)
            return
        path.failing = True  # first: a second stop that comes while this one is raised waits too
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
            path.failing = False  # the handler did not stop the block (it only logs, say)
        else:  # SIG_DFL: the process ends where it stands, as it would have
            signal.signal(signum, handler)
            signal.raise_signal(signum)

    failure: BaseException | None = None
    try:
        _set_handlers(stop_or_hold, _STOPS, previous, replaces=_not_ignored)
        yield path
    except BaseException as exc:
        failure = exc
        raise
    finally:
        failed = path.failing  # first two, before any call: a stop from here on waits too (``_Ending``)
        path.failing = True
        try:
            try:
                try:
                    _restore(previous)
                except (KeyboardInterrupt, SystemExit):  # cut short by another signal's (``_Ending``)
                    _restore(previous)
                    raise
            finally:
                path.failing = failed  # a handler not put back even so stops as before (``_Ending``)
        except KeyboardInterrupt as stop:  # one came while they were put back: it ends the block
            if failure is None or isinstance(failure, KeyboardInterrupt):
                raise
            raise stop from failure
        if path.held and not isinstance(failure, KeyboardInterrupt):
            try:
                signal.raise_signal(path.held[0])  # its handler runs here, on the main thread
            except KeyboardInterrupt as stop:
                if failure is None:
                    raise
                # Its ``__cause__``, so that a command says both (``failure_before``).
                raise stop from failure


_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Ending:
    """A block's end, marked (``over``) by the first statement of its ``finally``: a stop that comes from
    then until its handlers are back is noted in ``came`` by the block's handler, for the block to
    deliver once they are, not raised where it lands. Raised there, it landed at the call to
    ``_restore`` (a signal's Python handler runs at a call, a function's start or a loop's jump back),
    before any handler was put back, and all stayed the block's for good. No call comes before that
    first statement in the block's generator; the one before it, the ``with`` statement's call of
    contextlib's ``__exit__``, its handler knows by its frame (``_leaving``). A signal the block set no
    handler for (Ctrl-C for ``stopped_as_interrupt``, a caller's own) may still raise at that call: the
    block then puts its handlers back again before passing it on, or they stayed the block's, marked as
    ending, and every later stop was noted for a block long done. Where a third cuts that short too, the
    mark is taken off as the ``finally`` ends (an assignment, no call before it): the handlers left stop
    the process as they did before the block's end, not note for good what comes (every later SIGTERM
    swallowed)."""

    def __init__(self) -> None:
        self.over = False
        self.came: list[int] = []


# What the ``with`` statement calls to leave a ``contextlib.contextmanager`` block: it then resumes the
# block's generator (its ``finally``).
_LEAVE_BLOCK = contextlib._GeneratorContextManager.__exit__.__code__


def _leaving(frame: FrameType | None, block: FrameType) -> bool:
    """Whether a handler called in ``frame`` runs as the ``with`` statement leaves the block whose
    generator's frame is ``block``: in contextlib's ``__exit__`` for it, or in what that calls. A stop
    there, at the start of ``__exit__`` (a function's start, where a signal's Python handler runs), came
    before the block's ``finally`` could mark it ending (``_Ending``); raised there, out of ``__exit__``,
    the ``finally`` did not run and the block's handlers stayed set while the stop was handled (a second
    Ctrl-C held for a block long done). Noted instead, it is delivered by the ``finally``, its handlers
    back."""
    while frame is not None:
        if frame.f_code is _LEAVE_BLOCK:
            manager = frame.f_locals.get("self")
            if getattr(getattr(manager, "gen", None), "gi_frame", None) is block:
                return True
        frame = frame.f_back
    return False


def _only_default(handler: Any) -> bool:
    return handler == signal.SIG_DFL


def _not_ignored(handler: Any) -> bool:
    return handler not in (signal.SIG_IGN, None)  # None: not set from Python


def _set_handlers(
    handler: Callable[[int, FrameType | None], None],
    signums: tuple[int, ...],
    previous: dict[int, Any],
    *,
    replaces: Callable[[Any], bool],
) -> None:
    """Set ``handler`` for each of ``signums`` whose handler now ``replaces`` takes, on the main thread
    (elsewhere none can be set), recording the handler it had in ``previous`` first: the caller sets
    them inside its ``try`` and restores ``previous`` in its ``finally``. Set before the ``try``, a stop
    that came after one was set and before the next (its handler raising there) left the block's
    handler set for good: ``held_signals``' swallowed every later Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signums:
        before = signal.getsignal(signum)
        if replaces(before):
            previous[signum] = before
            signal.signal(signum, handler)


def _restore(previous: dict[int, Any]) -> None:
    """Put back each handler in ``previous``, all of them even when a stop comes meanwhile, then raise
    the first stop that came. Put back in a plain loop, a stop whose own handler was back already raised
    between two of them (a handler runs at the next call), and the handlers after it stayed the block's
    for good: ``held_signals``' swallowed every later SIGTERM. Blocking the signals meanwhile
    (``pthread_sigmask``) would not do: it blocks them on the main thread only, a signal sent to the
    process is then taken by another thread (a Kafka client's), and its handler runs on the main thread
    all the same. Any other failure is ``signal.signal``'s own (the block left off the main thread),
    which a retry meets again: that handler is left, the rest are tried, and the first failure raised.
    A second stop whose handler was back already can still raise where the loop goes back for the rest
    after the first (a loop's jump back, outside its ``try``): each block then calls this again before
    passing the stop on (a ``KeyboardInterrupt`` or ``SystemExit`` a handler raised; ``signal.signal``'s
    own failure is not tried again), or the handlers left stayed the block's for good."""
    left = list(previous.items())
    came: BaseException | None = None
    while left:
        try:
            while left:
                signal.signal(*left[0])
                del left[0]  # after: a stop raised between the two puts the same handler back again
        except KeyboardInterrupt as exc:  # a stop, raised by a handler put back already: the rest first
            came = came or exc
        except BaseException as exc:  # retried, it spun for ever
            came = came or exc
            del left[0]
    if came is not None:
        raise came


def failure_before(stop: KeyboardInterrupt) -> BaseException | None:
    """The failure a ``stops_wait_for_clean_up`` block was cleaning up after when ``stop`` came, or None
    (it came before any): a command reports it, then the stop."""
    return stop.__cause__


def hang_up_as_sigterm() -> None:
    """From now on SIGHUP (the terminal or ssh session closed) does what SIGTERM does when it comes: a
    server whose graceful stop is its SIGTERM handler (uvicorn's, PyTriton's) stops so on a hang-up too,
    which by default ended it where it stood. One already ignored (``nohup``) stays ignored."""
    if heard(signal.SIGHUP):
        signal.signal(signal.SIGHUP, _as_sigterm)


def _as_sigterm(signum: int, frame: object) -> None:
    # Raised, not called: SIGTERM's handler may change meanwhile (uvicorn sets its own while it serves).
    signal.raise_signal(signal.SIGTERM)


def signal_number(exc: KeyboardInterrupt) -> int:
    """The signal that stopped the command: SIGTERM or SIGHUP for ``Stopped``, else SIGINT (Ctrl-C)."""
    return exc.signum if isinstance(exc, Stopped) else int(signal.SIGINT)


def stopped_how(signum: int) -> str:
    """ "interrupted" for Ctrl-C, "stopped by SIGTERM" for the others."""
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
