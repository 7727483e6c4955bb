"""Review 47 of the small shared libraries: signals, commands, model cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared import model_cache
from shared.model_cache import fetch_directory, release, write_blocks_atomically
from shared.signals import held_signals, stopped_as_interrupt, stops_wait_for_clean_up
from tests.support.model_cache import BLIP_FILES, damaged_folder_copy
from tests.support.signals import stop_handlers, stops_as_from_a_shell

ROOT = Path(__file__).resolve().parents[1]


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
    restore_signal_handlers: None,
) -> None:
    # The block put its handlers back one at a time: a Ctrl-C whose handler was back already raised
    # there, and the handlers after it stayed the block's for good (``held_signals``' then swallowed
    # every later SIGTERM, ``stopped_as_interrupt``'s turned a later SIGHUP into an exception).
    before = stops_as_from_a_shell()
    with pytest.raises(KeyboardInterrupt), block():
        _stop_right_after_the_first_restore(monkeypatch, signal.SIGINT)
    monkeypatch.undo()
    assert stop_handlers() == before


# A command that writes bytes on stderr (progress from a tool's own output), then ends with its status, 3.
_WRITING_BYTES_ON_STDERR = (
    "import sys\nfrom shared.commands import run_command\n"
    "def command():\n"
    "    sys.stderr.buffer.write(b'progress 50%\\n')\n"
    "    sys.stderr.buffer.writelines([b'progress ', b'100%\\n'])\n"
    "    sys.stderr.buffer.flush()\n"
    "    print('done')\n"
    "    return 3\n"
    "sys.exit(run_command('skuforge planted', command))\n"
)


@contextmanager
def _stderr_that_cannot_be_written(how: str) -> Iterator[int]:
    """A descriptor for stderr whose writes fail: a pipe whose reader has gone (EPIPE), a full disk."""
    if how == "reader gone":
        read_end, fd = os.pipe()
        os.close(read_end)
    else:
        fd = os.open("/dev/full", os.O_WRONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["reader gone", "full disk"])
def test_bytes_written_on_a_stderr_that_cannot_be_written_keep_the_commands_status(how: str) -> None:
    # ``sys.stderr.buffer`` was stderr's own: a write through it that failed raised out of run_command,
    # and a command that had done its work ended with status 1 and a traceback nobody could read.
    with _stderr_that_cannot_be_written(how) as stderr:
        done = subprocess.run(
            [sys.executable, "-c", _WRITING_BYTES_ON_STDERR],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            timeout=120,
            check=False,
            text=True,
        )
    assert (done.returncode, done.stdout) == (3, "done\n")


def test_bytes_written_on_stderr_still_reach_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WRITING_BYTES_ON_STDERR],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        text=True,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "done\n", "progress 50%\nprogress 100%\n")


# Exits 0 when it can take the cache folder's install lock (an exclusive flock on the folder) at once.
_TAKES_THE_INSTALL_LOCK = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "try:\n"
    "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "except BlockingIOError:\n"
    "    sys.exit(1)\n"
)


def _another_process_can_install(folder: Path) -> bool:
    """Whether another process could take ``folder``'s install lock now (a real flock, no stand-in)."""
    taken = subprocess.run(
        [sys.executable, "-c", _TAKES_THE_INSTALL_LOCK, str(folder)], timeout=60, check=False
    )
    return taken.returncode == 0


@pytest.mark.parametrize("there_is_whole", [True, False], ids=["whole copy kept", "broken copy replaced"])
def test_a_copy_is_hashed_while_other_processes_may_install(tmp_path: Path, there_is_whole: bool) -> None:
    # The check of the copy already there (its sha256, a multi-GB read for a model) ran under the cache's
    # install lock: every other process's install on the host waited for it.
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / "0123456789abcdef-model.onnx"
    path.write_bytes(b"the copy there")
    lock_free_while_hashing: list[bool] = []

    def whole() -> bool:
        lock_free_while_hashing.append(_another_process_can_install(cache))
        return there_is_whole

    write_blocks_atomically(path, (b"our copy",), whole=whole)
    assert lock_free_while_hashing == [True]
    assert path.read_bytes() == (b"the copy there" if there_is_whole else b"our copy")
    assert [entry.name for entry in cache.iterdir()] == [path.name]


def test_a_copy_put_there_while_the_one_there_was_hashed_is_looked_at_again(tmp_path: Path) -> None:
    # Hashed outside the lock, the copy there may be replaced meanwhile by another process's whole one:
    # that one is kept, not replaced on the strength of the broken copy's hash.
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / "0123456789abcdef-model.onnx"
    path.write_bytes(b"broken copy")
    looked_at: list[bytes] = []

    def whole() -> bool:
        looked_at.append(path.read_bytes())
        if len(looked_at) == 1:  # another process puts its whole copy there meanwhile
            theirs = cache / ".theirs"
            theirs.write_bytes(b"their whole copy")
            os.replace(theirs, path)
            return False
        return path.read_bytes() == b"their whole copy"

    write_blocks_atomically(path, (b"our copy",), whole=whole)
    assert looked_at == [b"broken copy", b"their whole copy"]
    assert path.read_bytes() == b"their whole copy"


def test_a_folder_copy_is_checked_while_other_processes_may_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder copy's check (every file's sha256: a diffusion pipeline's gigabytes) ran under the cache's
    # install lock too, before and after the rename: every other install on the host waited for it.
    cache, uri, copy = damaged_folder_copy(tmp_path)
    lock_free_while_checking: list[bool] = []
    is_complete = model_cache._is_complete

    def checked(target: Path, keys: list[str]) -> bool:
        lock_free_while_checking.append(_another_process_can_install(cache))
        return is_complete(target, keys)

    monkeypatch.setattr(model_cache, "_is_complete", checked)
    assert fetch_directory(uri, cache, uri_from="the test") == copy
    release(copy)
    assert (copy / "model.safetensors").read_bytes() == BLIP_FILES["model.safetensors"]
    # Before the download (the broken copy, checked once: review 48), and again only of what changed.
    assert lock_free_while_checking
    assert all(lock_free_while_checking), lock_free_while_checking
