"""A replay lock written by something else than a replay (edited by hand, another tool) names its
run as it likes: its heartbeat's key is made of the run only as a replay writes it (uuid4 hex).
``isalnum`` let any script's letters through, at any length: a run of 90 CJK letters (270 bytes) or
300 ASCII ones made a key segment past the store's 255 bytes, and taking the stale lock over raised
ValueError out of ``skuforge dlq replay``."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared import dlq as dlq_module
from shared.dlq import _ReplayLock
from shared.store import FileStore


def _gone_pid() -> int:
    """The pid of a process of this machine that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("run", ["\u6f22" * 90, "a" * 300], ids=["cjk-letters", "long-ascii"])
def test_a_killed_replays_lock_with_an_odd_run_is_taken_over(tmp_path: Path, run: str) -> None:
    store = FileStore(tmp_path)
    dlq_topic = f"t{uuid.uuid4().hex[:8]}.sku.ingested.v1.dlq"
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
