"""Child processes that meet SIGINT, SIGTERM and SIGHUP as a login shell's would."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

# A child script's first lines: kafka-python's event loop logs "Connection made" from inside the task
# that makes a connection, and this holds the loop there (as a slow DNS lookup does) after printing
# "connecting", so a test can send its stop just then. The loop logs and drops what a task raises,
# KeyboardInterrupt included: a producer bootstrapping on the main thread loses the stop. Only a loop
# run by its caller's thread is held (a producer's bootstrap), not a client's own IO thread (a
# consumer's, an admin client's: ``kafka-io-<client id>``), whose caller waits where a stop reaches it.
HELD_IN_THE_CONNECTION = """
import logging, sys, threading, time

def holds_the_connection(record):  # a filter: a handler's lock held on would stop logging's exit
    on_an_io_thread = threading.current_thread().name.startswith("kafka-io-")
    if record.getMessage().endswith(": Connection made") and not on_an_io_thread:
        print("connecting", flush=True)
        time.sleep(60)
    return False

connection_log = logging.getLogger("kafka.net.connection")
connection_log.setLevel(logging.DEBUG)
connection_log.addFilter(holds_the_connection)
"""


@contextlib.contextmanager
def silent_broker() -> Iterator[str]:
    """``host:port`` of a listener that accepts connections and never answers, as a Kafka broker that
    hangs does: a client bootstrapping from it waits."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def as_from_a_shell() -> None:
    """A ``preexec_fn``: the child's SIGINT, SIGTERM and SIGHUP default and not blocked. A runner under
    `nohup` (SIGHUP ignored) or started in the background (SIGINT ignored), or a thread of the test
    process that blocks signals, passes its own on through fork and exec, and the commands rightly
    leave an ignored signal ignored (``shared.signals.stopped_as_interrupt``)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


# When a child is ready for a stop: the line it prints then (without its newline), or a function that
# returns once it is (and fails the test if it never will be).
Ready = str | Callable[[subprocess.Popen[str]], None]


@dataclass(frozen=True)
class Ended:
    """How a stopped child ended: its exit status (``-N`` where signal N ended it) and what it wrote."""

    returncode: int
    out: str
    err: str


def stopped(
    command: Sequence[str],
    stops: Sequence[tuple[Ready, signal.Signals]],
    *,
    lost: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
    within_s: float = 20,
) -> Ended:
    """Runs ``command`` as a shell would (``as_from_a_shell``) and, for each ``(ready, stop)`` of
    ``stops`` in turn, waits until it is ``ready`` and sends it ``stop``; gives how it ended, failing the
    test with ``lost`` unless it ended within ``within_s`` of the last stop. A child the test leaves any
    other way is killed."""
    run = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_shell,
    )
    try:
        for ready, stop in stops:
            if isinstance(ready, str):
                assert run.stdout is not None
                assert run.stdout.readline() == ready + "\n", run.communicate()
            else:
                ready(run)
            run.send_signal(stop)
        try:
            out, err = run.communicate(timeout=within_s)
        except subprocess.TimeoutExpired:
            pytest.fail(lost)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return Ended(run.returncode, out, err)


# The stops a command's signal blocks (``shared.signals``) take over.
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What ``signal.getsignal`` gives and ``signal.signal`` takes.
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def stop_handlers() -> dict[signal.Signals, Handler]:
    """The handler each of ``STOPS`` has now."""
    return {signum: signal.getsignal(signum) for signum in STOPS}


def stops_as_from_a_shell() -> dict[signal.Signals, Handler]:
    """Sets ``STOPS``' handlers as a command typed at a shell meets them (Ctrl-C raises
    KeyboardInterrupt, SIGTERM and SIGHUP their defaults) and gives them (``stop_handlers``)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    return stop_handlers()


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    """A stage run in the test's main thread installs its own SIGTERM/SIGINT handlers, a signal block
    SIGHUP's too: give pytest its own back afterwards."""
    saved = stop_handlers()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def signals_as_from_a_shell() -> Iterator[None]:
    """Ctrl-C and SIGTERM handled in this process as in a command typed at a shell, whatever the runner
    left: a runner started in the background (CI's) ignores SIGINT, which a command rightly leaves
    ignored."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
