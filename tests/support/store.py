"""``ReadCountingStore``: a FileStore that records what is read from it, for tests that prove an object
is refused on its event's figures before anything is read."""

from __future__ import annotations

from pathlib import Path

from shared.store import FileStore


class ReadCountingStore(FileStore):
    """A FileStore that records the keys it reads (``keys_read``) and how many bytes (``bytes_read``)."""

    def __init__(self, root: Path | str) -> None:
        super().__init__(root)
        self.keys_read: list[str] = []
        self.bytes_read = 0

    def _read(self, key: str) -> bytes:
        data = super()._read(key)
        self.keys_read.append(key)
        self.bytes_read += len(data)
        return data

    def _read_at_most(self, key: str, max_bytes: int) -> bytes:
        data = super()._read_at_most(key, max_bytes)
        self.keys_read.append(key)
        self.bytes_read += len(data)
        return data
