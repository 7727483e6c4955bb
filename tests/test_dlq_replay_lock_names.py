"""A replay lock written by something else than a replay (edited by hand, another tool) names its
run as it likes: its heartbeat's key is made of the run only as a replay writes it (uuid4 hex).
``isalnum`` let any script's letters through, at any length: a run of 90 CJK letters (270 bytes) or
300 ASCII ones made a key segment past the store's 255 bytes, and taking the stale lock over raised
ValueError out of ``skuforge dlq replay``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shared import dlq as dlq_module
from shared.dlq import DlqError, _ReplayLock
from shared.store import FileStore


def _gone_pid() -> int:
    """The pid of a process of this machine that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _long_dlq_topic() -> str:
    """A DLQ topic name Kafka takes (up to 249 characters) but past 211: the lock's name, its run and
    '.alive' made a heartbeat key segment past the store's 255 bytes."""
    return f"t{uuid.uuid4().hex[:8]}.{'n' * 200}.sku.ingested.v1.dlq"


@pytest.mark.parametrize(
    ("run", "long_topic"),
    [("\u6f22" * 90, False), ("a" * 300, False), (uuid.uuid4().hex, True)],
    ids=["cjk-letters", "long-ascii", "long-named-dlq"],
)
def test_a_killed_replays_lock_with_an_odd_run_or_a_long_name_is_taken_over(
    tmp_path: Path, run: str, long_topic: bool
) -> None:
    store = FileStore(tmp_path)
    dlq_topic = _long_dlq_topic() if long_topic else f"t{uuid.uuid4().hex[:8]}.sku.ingested.v1.dlq"
    killed = {
        "run": run,
        "host": dlq_module.socket.gethostname(),
        "pid_namespace": dlq_module._pid_namespace(),
        "pid": _gone_pid(),
        "started_at": "2026-12-01T00:00:00+00:00",
    }
    key = f"dlq-replay-locks/{dlq_topic}.json"
    assert store.put_new(key, json.dumps(killed).encode())
    lock = _ReplayLock(store, dlq_topic, {})
    try:
        assert lock.acquire() == killed
        assert json.loads(store.get_bytes(key))["run"] == lock.holder["run"]
    finally:
        lock.release()
    assert not store.exists(key)


def test_a_replay_of_a_long_named_dlq_takes_and_releases_its_lock(tmp_path: Path) -> None:
    """Before, releasing the lock removed a heartbeat whose key the store refused (ValueError), out of
    ``skuforge dlq replay`` at its end."""
    store = FileStore(tmp_path)
    lock = _ReplayLock(store, _long_dlq_topic(), {})
    assert lock.acquire() is None
    lock.release()
    assert not list(store.list_keys("dlq-replay-locks/"))


def test_the_heartbeat_of_a_replay_of_a_long_named_dlq_keeps_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay on another machine whose lock was written long ago, but whose heartbeat is fresh, runs:
    a second replay is refused. Before, its heartbeat could not be written (the key was refused), and
    the second took the lock of a replay that ran."""
    dlq_topic = _long_dlq_topic()
    store = FileStore(tmp_path)
    key = f"dlq-replay-locks/{dlq_topic}.json"
    monkeypatch.setattr(dlq_module, "LOCK_REFRESH_S", 0.01)
    running = _ReplayLock(store, dlq_topic, {})
    running.holder["host"] = "another-machine"
    assert running.acquire() is None
    try:
        guard = time.monotonic() + 30  # a heartbeat never written fails the test, not hangs it
        while len(list(store.list_keys("dlq-replay-locks/"))) < 2 and time.monotonic() < guard:
            time.sleep(0.01)
        long_ago = time.time() - 3600
        os.utime(tmp_path / key, (long_ago, long_ago))
        with pytest.raises(DlqError, match=r"another replay of .* is running: pid"):
            _ReplayLock(store, dlq_topic, {}).acquire()
    finally:
        running.release()
