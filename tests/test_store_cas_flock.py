"""A FileStore's compare-and-swap on a folder whose file system refuses ``flock`` (an NFS mount
without its lock daemon: ENOLCK). The FileStore says any OS failure but a key's clash is
``TransientError``; this one went out as a bare OSError, past the callers that handle the store's
errors (the DLQ replay lock's takeover and release: a traceback)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from shared import store as store_module
from shared.errors import TransientError
from shared.store import FileStore


def _no_locks(fd: int, operation: int) -> None:
    raise OSError(errno.ENOLCK, "No locks available")


def test_a_compare_and_swap_the_file_system_cannot_lock_is_a_transient_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    assert store.put_new("locks/a.json", b"{}")
    _, version = store.get_versioned("locks/a.json")
    monkeypatch.setattr(store_module.fcntl, "flock", _no_locks)
    refused = r"cannot lock .*locks/a\.json to compare and swap it: .*No locks available"
    with pytest.raises(TransientError, match=refused):
        store.replace_if("locks/a.json", b"[]", version)
    with pytest.raises(TransientError, match=refused):
        store.delete_if("locks/a.json", version)
    monkeypatch.undo()
    assert store.get_bytes("locks/a.json") == b"{}"
