"""Memory Python holds while something runs, as tracemalloc counts it (numpy arrays and bytes are
counted; Pillow's own image buffers are not), and a file too big to be read into it."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def peak_traced_bytes(action: Callable[[], object]) -> int:
    """The most memory Python held at once, above what it held before, while ``action`` ran."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


HUGE_FILE_BYTES = 3 * 2**30


def make_huge_and_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``path`` a file of HUGE_FILE_BYTES, sparse so nothing is written to disk, that fails the
    test if ``Path.read_bytes`` reads it or ``Path.open`` opens it (evaluate reads held-out photos
    through ``open``, a capped read): what is refused by its size must be refused unread."""
    with path.open("r+b") as handle:
        handle.truncate(HUGE_FILE_BYTES)
    read_bytes, open_path = Path.read_bytes, Path.open

    def guarded(read: Path) -> bytes:
        assert read != path, f"{path}, {HUGE_FILE_BYTES} bytes, was read into memory"
        return read_bytes(read)

    def guarded_open(opened: Path, *args: Any, **kwargs: Any) -> Any:
        assert opened != path, f"{path}, {HUGE_FILE_BYTES} bytes, was opened to be read"
        return open_path(opened, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    monkeypatch.setattr(Path, "open", guarded_open)
