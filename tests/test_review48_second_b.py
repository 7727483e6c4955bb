"""Second review of today's model cache, signals and commands changes (review 48)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from shared import model_cache, signals
from shared.model_cache import fetch_file, release
from shared.signals import Stopped, raise_stopped, stopped_as_interrupt, stops_wait_for_clean_up
from tests.support.model_cache import damaged_file_copy


def _open_anywhere(dev_ino: tuple[int, int]) -> bool:
    """Whether any descriptor of this process is open on the inode ``dev_ino`` (which keeps it from
    being freed, and so its number from being given to a new file)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            found = os.fstat(int(name))
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == dev_ino:
            return True
    return False


def test_a_whole_copy_put_where_a_broken_one_was_freed_is_not_taken_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The verdict 'not whole' was remembered by the entry's (device, inode, size, times) alone, the
    # broken file not kept open. Deleted by another process, which put its whole copy there (and held
    # it), the freed inode number could be the new file's, and on a file system with coarse times (1 s,
    # 2 s on vfat) its size and times the same: taken for the broken copy unread, that process's copy
    # was replaced, its hold left on a deleted file. Here the file system reuses the number and the
    # times whenever the broken inode is freed, as such a one may.
    cache, uri, copy = damaged_file_copy(tmp_path)
    broken = os.lstat(copy)
    broken_state = model_cache._entry_state(copy)
    others: list[os.stat_result] = []

    entry_state = model_cache._entry_state

    def reused(path: Path) -> tuple[int, ...] | None:
        state = entry_state(path)
        if others and path == copy and not _open_anywhere((broken.st_dev, broken.st_ino)):
            return broken_state  # the freed number and the same coarse times, given to the new file
        return state

    file_sha256 = model_cache.file_sha256

    def read_then_replaced(path: Path) -> str:
        digest = file_sha256(path)
        if path == copy and not others:  # another process deletes the broken copy, puts its own there
            other = cache / "other-process-copy"
            other.write_bytes(b"weights " * 100)
            os.chmod(other, 0o644)
            os.replace(other, copy)
            others.append(os.lstat(copy))
        return digest

    monkeypatch.setattr(model_cache, "_entry_state", reused)
    monkeypatch.setattr(model_cache, "file_sha256", read_then_replaced)

    assert fetch_file(uri, cache, uri_from="the test") == copy
    release(copy)
    assert copy.read_bytes() == b"weights " * 100
    assert os.path.samestat(os.lstat(copy), others[0])  # the other process's whole copy, kept


def _ctrl_c_at_both_calls_to_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C lands at the block's call to ``_restore`` and another at its call again (the retry): each
    raises there, at the call, before any handler is put back (here at once)."""
    restore = signals._restore
    calls: list[int] = []

    def ctrl_c_then_restore(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise KeyboardInterrupt
        restore(*args, **kwargs)

    monkeypatch.setattr(signals, "_restore", ctrl_c_then_restore)


@pytest.mark.parametrize(
    "block",
    [stopped_as_interrupt, stops_wait_for_clean_up],
    ids=["stopped_as_interrupt", "stops_wait_for_clean_up"],
)
def test_a_handler_a_block_could_not_put_back_still_stops_on_sigterm(
    block: Callable[[], AbstractContextManager[object]],
    monkeypatch: pytest.MonkeyPatch,
    restore_signal_handlers: None,
) -> None:
    # Since a block marks its end (ending.over, path.failing) before putting its handlers back, a handler
    # it could not put back (its restore cut short at both calls) only noted or held what came: every
    # later SIGTERM was swallowed for good, where before it still raised Stopped (stopped_as_interrupt's)
    # or reached the caller's handler (stops_wait_for_clean_up's).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # stopped_as_interrupt sets its own only over the default; stops_wait_for_clean_up's passes a stop on
    # to the caller's (raise_stopped here, rather than the default that ends the process).
    signal.signal(signal.SIGTERM, signal.SIG_DFL if block is stopped_as_interrupt else raise_stopped)
    _ctrl_c_at_both_calls_to_restore(monkeypatch)
    with pytest.raises(KeyboardInterrupt), block():
        pass
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, raise_stopped)  # the block's, left
    with pytest.raises(Stopped):
        signal.raise_signal(signal.SIGTERM)
