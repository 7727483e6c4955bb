"""How a command ends on a failure it can name: one line on stderr and an exit status, no traceback.

A bad setting, the object store refusing or away, an object stored that does not read and Ctrl-C (or
SIGTERM, SIGHUP: ``shared.signals``) each say what to do in their message; a traceback around it
buried that line under frames of our code. A reader of stdout that stops early (``| head -1``) ends the
command quietly; a stdout that cannot be written (``> report.txt`` on a full disk) is one line too, and a
stderr that cannot be written (``2> log`` on a full disk, a closed pipe) loses what is said on it, never
the command's exit status. What is written on a closed stdout or stderr (``>&-``, ``2>&-``) is dropped;
so is run_command's own flush of, and line on, a stdout or stderr the command closed itself.
``skuforge`` runs every command through ``run_command``, and so do the fitting tools that open a model and
every bench module's ``main`` (``tests/test_bench_review45b.py`` holds them to it).
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import sys
from collections.abc import Callable
from typing import Any, TextIO

from shared.argtypes import NonFiniteFigure
from shared.config import ConfigError
from shared.errors import BadInput, StoreMisconfigured, TransientError
from shared.signals import signal_number, stopped_how

__all__ = ["run_command"]


def run_command(name: str, command: Callable[[], int]) -> int:
    """``command()``'s exit status; a failure it can name is printed after ``name:`` on stderr instead:
    2 for a bad setting (as for a bad option), 1 for the store's or a stored object's, 128 + the
    signal for Ctrl-C, SIGTERM or SIGHUP where the command has nothing of its own to say or undo; 1,
    and nothing said, when stdout's reader has gone; 1 when stdout cannot be written (a full disk). The
    status is the same when stderr cannot be written either: what the command or this says on it is
    dropped (``_GuardedStderr``); so is what it writes on a closed stdout (``_WatchedStdout``). A stdout
    or stderr the command closed (their bytes, or those ``detach`` gave it) is not flushed again."""
    stdout = sys.stdout = _WatchedStdout(sys.stdout)
    stderr = sys.stderr = _GuardedStderr(sys.stderr)
    try:
        status = command()
        sys.stdout.flush()  # here, not at exit, where a closed pipe is a message we cannot catch
        return status
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a pipe to a child the command runs: a failure to show
        # `skuforge flow | head -1`: as Python's docs advise ("Note on SIGPIPE"), stdout to devnull so
        # the interpreter's last flush does not raise again.
        _to_devnull(sys.stdout)
        return 1
    except OSError as exc:
        if exc is not stdout.failure:
            raise  # a file of the command's own, or a pipe to a child: its caller names it
        # `skuforge flow > report.txt` on a full disk: before, a traceback ending in "[Errno 28]".
        # Stdout to devnull, as for a closed pipe, so the interpreter's last flush does not fail again.
        _to_devnull(stdout)
        _say(
            f"{name}: its output could not be written: {exc} (free room where stdout goes, or send it "
            "elsewhere, and try again)"
        )
        return 1
    except ConfigError as exc:
        _say(f"{name}: {exc}")
        return 2
    except BadInput as exc:  # something stored that cannot be read (a manifest part): named, not a traceback
        _say(f"{name}: {exc}")
        return 1
    except (
        NonFiniteFigure
    ) as exc:  # a results file's figure NaN: named, the file not written, not a traceback
        _say(f"{name}: {exc}")
        return 1
    except StoreMisconfigured as exc:  # it names what to check, the setting or option its URI came from too
        _say(f"{name}: {exc}\n(fix that and try again)")
        return 1
    except TransientError as exc:  # the store or the broker away
        # Not SKUFORGE_STORE_URI: the store away may be another one (--scenes, the adapters' or a model's).
        _say(
            f"{name}: {exc}\n(the object store or Kafka could not be reached: check that it is up, "
            "SKUFORGE_S3_ENDPOINT_URL or SKUFORGE_KAFKA_BOOTSTRAP, and try again)"
        )
        return 1
    except KeyboardInterrupt as exc:
        signum = signal_number(exc)
        _say(f"{name}: {stopped_how(signum)}")
        return 128 + signum
    finally:
        if sys.stdout is stdout:  # not one the command set for good
            sys.stdout = stdout.put_back()
        if sys.stderr is stderr:
            stderr.flush()  # a buffered one's last words: here, where their failure is caught
            sys.stderr = stderr.put_back()


def _say(line: str) -> None:
    """``line`` on stderr: dropped where stderr cannot be written either (``_GuardedStderr``), so the exit
    status still says what happened. Raised, it ended every failure with status 1 (a bad setting's is 2,
    Ctrl-C's 130) and a traceback nobody could read."""
    try:
        print(line, file=sys.stderr)
    except OSError:  # stderr is not run_command's (the command set its own for good)
        _to_devnull(sys.stderr)


def _to_devnull(stream: TextIO | _WatchedStdout) -> None:
    """Send what is written to ``stream`` from now on to devnull, so that neither the next write nor the
    interpreter's last flush fails on what was left in its buffer; nothing when no file is behind it."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR of such a pipe alone)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no file behind it (replaced, closed)
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _closed(stream: Any) -> bool:
    """Whether the command closed ``stream`` (stdout's or stderr's text, their bytes, or below them the
    raw file): a flush of it raises ``ValueError`` though all was flushed when it closed. False where it
    cannot say (a text stream whose bytes were taken: that ``ValueError`` is the command's to meet)."""
    try:
        return bool(stream.closed)
    except (AttributeError, ValueError):
        return False


class _WatchedStdout:
    """``stream`` (stdout), remembering the ``OSError`` a write to it raised: an ``OSError`` from
    ``print`` names no file, and a full disk under stdout read as any other failure of the command.
    A write that failed leaves nothing in its buffer, so the failure cannot be asked of stdout after.
    Where stdout was closed (``>&-``, a daemon's: ``sys.stdout`` is None) what is written is dropped, as
    ``print`` drops it there: a write to None was an ``AttributeError``, a traceback and status 1."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.failure: OSError | None = None
        self.detached: _WatchedStdoutBytes | None = None  # stdout's bytes, once the command took them

    def write(self, text: str) -> int:
        if self.stream is None:
            return len(text)
        try:
            return self.stream.write(text)
        except OSError as exc:
            self.failure = exc
            raise

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.detached is not None:  # stdout's text has nothing below it left to flush into
            self.detached.flush()
            return
        if self.stream is None or _closed(self.stream):  # closed by the command: all was flushed then
            return
        try:
            self.stream.flush()
        except OSError as exc:
            self.failure = exc
            raise

    def detach(self) -> _WatchedStdoutBytes:
        """Stdout's bytes, taken from its text and watched as ``buffer``'s are. Stdout's own ``detach``
        gave the bytes unwatched (a full disk under them was a traceback), and left run_command's flush and
        the interpreter's last one to a text stream with nothing below it: a ``ValueError`` traceback, or
        "Exception ignored" and status 120. Where stdout has no bytes to give (taken already, an
        ``io.StringIO``, closed) it fails as stdout's own does, for the command to handle."""
        stream: Any = self.stream  # None (closed): AttributeError, as sys.stdout.detach() there
        self.detached = _WatchedStdoutBytes(self, stream.detach())
        return self.detached

    def fileno(self) -> int:
        """Stdout's descriptor, also once the command took its bytes (``detach``): run_command asks it
        whether stdout's reader has gone and sends stdout to devnull through it."""
        if self.detached is not None:
            return int(self.detached.fileno())
        return self.stream.fileno()  # type: ignore[union-attr]  # None: AttributeError, as stdout's own

    def put_back(self) -> TextIO | None:
        """Stdout as run_command found it, for ``sys.stdout`` once the command is done; once the command
        took its bytes (``detach``), a text stream over them again, alike, so that writing to stdout and
        the interpreter's last flush do not fail on a text stream with nothing below it; None (as a
        stdout closed at start) where the command closed those bytes: no text stream goes over them."""
        if self.detached is None or self.stream is None:
            return self.stream
        if _closed(self.detached.layer):
            return None
        return _text_again(self.stream, self.detached.layer)

    @property
    def buffer(self) -> _WatchedStdoutBytes:
        """Stdout's bytes, watched as its text is: ``sys.stdout.buffer`` was stdout's own, and a full disk
        under a command writing bytes (``> report.bin``) was a traceback, not the one line. None where
        stdout has no bytes below its text (an ``io.StringIO``): ``AttributeError``, as stdout's own; with
        stdout closed, one that drops all."""
        return _WatchedStdoutBytes(self, None if self.stream is None else self.stream.buffer)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...: stdout's own
        return getattr(self.stream, name)


def _text_again(detached_text: Any, its_bytes: Any) -> TextIO:
    """A text stream over ``its_bytes``, alike ``detached_text`` (the one they were detached from)."""
    return io.TextIOWrapper(
        its_bytes,
        encoding=detached_text.encoding,
        errors=detached_text.errors,
        line_buffering=detached_text.line_buffering,
        write_through=detached_text.write_through,
    )


class _WatchedStdoutBytes:
    """``layer``, below stdout's text (its bytes, or below them its raw file), whose failed write is
    remembered as ``stdout``'s own (``_WatchedStdout``); with stdout closed (``layer`` None), all is
    dropped."""

    def __init__(self, stdout: _WatchedStdout, layer: Any) -> None:
        self.stdout = stdout
        self.layer = layer

    def write(self, data: bytes) -> Any:  # a raw file's may be None (nothing written, non-blocking)
        if self.layer is None:
            return memoryview(data).nbytes
        try:
            return self.layer.write(data)
        except OSError as exc:
            self.stdout.failure = exc
            raise

    def writelines(self, blocks: list[bytes]) -> None:
        for block in blocks:
            self.write(block)

    def flush(self) -> None:
        if self.layer is None or _closed(self.layer):  # closed by the command: all was flushed then
            return
        try:
            self.layer.flush()
        except OSError as exc:
            self.stdout.failure = exc
            raise

    @property
    def raw(self) -> _WatchedStdoutBytes:
        """The raw file below stdout's bytes, watched too; none below a raw file (``AttributeError``);
        with stdout closed, one that drops all."""
        return _WatchedStdoutBytes(self.stdout, None if self.layer is None else self.layer.raw)

    def __getattr__(self, name: str) -> Any:  # fileno, mode...: the layer's own
        return getattr(self.layer, name)


class _GuardedStderr:
    """``stream`` (stderr), whose writes never fail: where it cannot be written (``2> log`` on a full
    disk, ``2>&1 | head -1`` once the reader has gone) what is said is dropped and the stream sent to
    devnull (``_to_devnull``). A command's own ``print(..., file=sys.stderr)`` (a warning, progress)
    raised out of ``run_command`` so: a command that had done its work ended with status 1 and a traceback
    nobody could read. Where stderr was closed (``2>&-``: ``sys.stderr`` is None) what is said is dropped
    too: ``print`` to None printed it on stdout, into the command's output, and a ``write`` was an
    ``AttributeError``."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.detached: _GuardedStderrBytes | None = None  # stderr's bytes, once the command took them

    def write(self, text: str) -> int:
        if self.stream is None:
            return len(text)
        if self.detached is not None:  # the command took stderr's bytes: what is said still goes there
            self.detached.write(text.encode(self.stream.encoding, self.stream.errors or "strict"))
            return len(text)
        if _closed(self.stream):  # the command closed stderr (its bytes, or below them its raw file)
            return len(text)
        try:
            return self.stream.write(text)
        except OSError:
            _to_devnull(self.stream)
            return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.detached is not None:  # stderr's text has nothing below it left to flush into
            self.detached.flush()
            return
        if self.stream is None or _closed(self.stream):
            return
        try:
            self.stream.flush()
        except OSError:
            _to_devnull(self.stream)

    def detach(self) -> _GuardedStderrBytes:
        """Stderr's bytes, taken from its text and guarded as ``buffer``'s are. Stderr's own ``detach``
        gave them unguarded, and left run_command's last flush to a text stream with nothing below it: a
        ``ValueError``, "lost sys.stderr" and status 120. What is said on ``sys.stderr`` after (run_command's
        own line on a failure) goes to those bytes: it was a ``ValueError`` traceback instead. Where stderr
        has no bytes to give (taken already, an ``io.StringIO``, closed) it fails as stderr's own does,
        for the command to handle."""
        stream: Any = self.stream  # None (closed): AttributeError, as sys.stderr.detach() there
        self.detached = _GuardedStderrBytes(stream.detach())
        return self.detached

    def put_back(self) -> TextIO | None:
        """Stderr as run_command found it, for ``sys.stderr`` once the command is done; once the command
        took its bytes (``detach``), a text stream over them again, alike, or None where it closed them
        (``_WatchedStdout.put_back``)."""
        if self.detached is None or self.stream is None:
            return self.stream
        if _closed(self.detached.layer):
            return None
        return _text_again(self.stream, self.detached.layer)

    @property
    def buffer(self) -> _GuardedStderrBytes:
        """Stderr's bytes, guarded as its text is: ``sys.stderr.buffer`` was stderr's own, and a command
        writing bytes through it (a tool's output passed on) ended so with status 1 and a traceback.
        None where stderr has no bytes below its text (an ``io.StringIO``: pytest's capture, a caller's
        redirect): ``AttributeError``, as stderr's own, so ``hasattr(sys.stderr, "buffer")`` tells true."""
        return _GuardedStderrBytes(None if self.stream is None else self.stream.buffer)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...: stderr's own
        return getattr(self.stream, name)


class _GuardedStderrBytes:
    """``layer``, below stderr's text (its bytes, or below them its raw file), whose writes never fail,
    as ``_GuardedStderr``'s own: what cannot be written is dropped and the stream sent to devnull; with
    stderr closed (``layer`` None), all is dropped."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def write(self, data: bytes) -> int:
        if self.layer is None or _closed(self.layer):  # closed at start (`2>&-`), or by the command
            return memoryview(data).nbytes
        try:
            written: int = self.layer.write(data)
            return written
        except OSError:
            _to_devnull(self.layer)
            return memoryview(data).nbytes

    def writelines(self, blocks: list[bytes]) -> None:
        for block in blocks:
            self.write(block)

    def flush(self) -> None:
        if self.layer is None or _closed(self.layer):
            return
        try:
            self.layer.flush()
        except OSError:
            _to_devnull(self.layer)

    @property
    def raw(self) -> _GuardedStderrBytes:
        """The raw file below stderr's bytes, guarded too: ``.raw`` was the unguarded file. None below a
        raw file (``AttributeError``); with stderr closed, one that drops all."""
        return _GuardedStderrBytes(None if self.layer is None else self.layer.raw)

    def __getattr__(self, name: str) -> Any:  # fileno, mode...: the layer's own
        return getattr(self.layer, name)
