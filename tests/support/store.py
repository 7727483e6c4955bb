"""``ReadCountingStore``: a FileStore that records what is read from it, for tests that prove an object
is refused on its event's figures before anything is read; ``WriteFailsOnce``: a FileStore whose next
write under a prefix fails, for tests of a store fault half-way through a sequence of writes;
``written_before``: an object put as a store wrote it before its key check refused the key's character."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import TransientError
from shared.store import FileStore, ObjectStore


def written_before(store: ObjectStore, key: str, data: bytes) -> None:
    """``data`` under ``key`` as a store wrote it before its key check refused the character."""
    if isinstance(store, FileStore):
        path = store.root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        s3: Any = store
        s3.client.put_object(Bucket=s3.bucket, Key=s3._key_prefix + key, Body=data)


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


class WriteFailsOnce(FileStore):
    """A FileStore whose next write of a key starting with ``fail_next_write`` fails once, as S3 away
    for a moment does (set it to a key prefix; it is cleared when the write fails)."""

    fail_next_write: str | None = None

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if self.fail_next_write is not None and key.startswith(self.fail_next_write):
            self.fail_next_write = None
            raise TransientError(f"cannot write {key}: the store is away")
        super()._write(key, data, content_type)
