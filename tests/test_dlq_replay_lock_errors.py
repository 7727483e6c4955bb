"""A store error the replay lock does not expect (a ValueError, an OSError the store does not map: a
file lock an NFS mount refuses, an S3 answer it does not know). Before, it ended the heartbeat thread
unseen, and the running replay's lock looked stale to a second replay, which took it over: two replays
of one DLQ sent its letters twice. Out of the takeover or the release it was a traceback."""

from __future__ import annotations

import errno
import itertools
import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka.future import Future

from schemas.topics import SKU_INGESTED
from shared import dlq as dlq_module
from shared.dlq import DlqError, _ReplayLock
from shared.errors import TransientError
from shared.store import FileStore
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic
from tests.support.dlq import ingested_letter, write_letters


class HeartbeatRefused(FileStore):
    """A store that takes the lock but raises what it does not map for the heartbeat."""

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if key.endswith(".alive"):
            raise ValueError("a store error the lock does not expect")
        super()._write(key, data, content_type)


class LockingRefused(FileStore):
    """A store whose compare-and-swap raises what it does not map (flock on NFS without a lock daemon)."""

    def _replace_if(self, key: str, data: bytes, version: str, content_type: str) -> bool:
        raise OSError(errno.ENOLCK, "No locks available")

    def _delete_if(self, key: str, version: str) -> bool:
        raise OSError(errno.ENOLCK, "No locks available")


def _dlq_topic() -> str:
    return f"t{uuid.uuid4().hex[:8]}.sku.ingested.v1.dlq"


def _heartbeat_stopped(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """What a replay's lock on ``store`` says at its next send once its heartbeat has ended (a
    heartbeat that goes on is the test's failure, not a hang); the lock is released after."""
    monkeypatch.setattr(dlq_module, "LOCK_REFRESH_S", 0.01)
    lock = _ReplayLock(store, _dlq_topic(), {})
    assert lock.acquire() is None
    try:
        assert lock._refresher is not None
        lock._refresher.join(timeout=30)
        with pytest.raises(DlqError) as stopped:
            lock.check()
        return str(stopped.value)
    finally:
        lock.release()


def test_a_replay_whose_heartbeat_fails_stops_before_its_next_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = _heartbeat_stopped(HeartbeatRefused(tmp_path), monkeypatch)
    assert re.search(r"could not write its heartbeat .*ValueError.*; stopped here", said), said


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_takeover_the_store_fails_is_a_replay_error(tmp_path: Path) -> None:
    store = LockingRefused(tmp_path)
    dlq_topic = _dlq_topic()
    killed = {
        "run": uuid.uuid4().hex,
        "host": dlq_module.socket.gethostname(),
        "pid_namespace": dlq_module._pid_namespace(),
        "pid": _gone_pid(),
        "started_at": "2026-12-01T00:00:00+00:00",
    }
    assert store.put_new(f"dlq-replay-locks/{dlq_topic}.json", json.dumps(killed).encode())
    with pytest.raises(DlqError, match=r"could not take the replay lock .*No locks available"):
        _ReplayLock(store, dlq_topic, {}).acquire()


def test_a_release_the_store_fails_ends_the_heartbeat_and_raises_nothing(tmp_path: Path) -> None:
    """The lock is left, and taken over once stale: a traceback out of the replay's ``finally`` hid its
    report."""
    store = LockingRefused(tmp_path)
    lock = _ReplayLock(store, _dlq_topic(), {})
    assert lock.acquire() is None
    lock.release()
    assert lock._refresher is not None and not lock._refresher.is_alive()
    assert store.exists(lock.key)


def test_a_fresh_lock_of_this_machine_naming_a_pid_no_process_can_have_is_taken_over(tmp_path: Path) -> None:
    """A lock written by hand or another tool: ``os.kill`` raised OverflowError for a pid past a C int,
    out of the takeover, where a pid that no process has is a replay that is gone."""
    store = FileStore(tmp_path)
    dlq_topic = _dlq_topic()
    impossible = {
        "run": uuid.uuid4().hex,
        "host": dlq_module.socket.gethostname(),
        "pid_namespace": dlq_module._pid_namespace(),
        "pid": 2**40,
        "started_at": "2026-12-01T00:00:00+00:00",
    }
    assert store.put_new(f"dlq-replay-locks/{dlq_topic}.json", json.dumps(impossible).encode())
    lock = _ReplayLock(store, dlq_topic, {})
    try:
        assert lock.acquire() == impossible
    finally:
        lock.release()


class LockReadRefused(FileStore):
    """A store that, once ``refusing``, raises what it does not map when the lock is read."""

    refusing = False

    def _read_versioned(self, key: str) -> tuple[bytes, str]:
        if self.refusing:
            raise ValueError("a store error the lock does not expect")
        return super()._read_versioned(key)


def test_a_look_at_the_lock_the_store_fails_stops_the_sends_as_a_replay_error(tmp_path: Path) -> None:
    """Raised bare out of the check before a send, it went past the replay's handling: the records
    acknowledged before were never marked, and the next replay sent them again."""
    store = LockReadRefused(tmp_path)
    lock = _ReplayLock(store, _dlq_topic(), {})
    assert lock.acquire() is None
    try:
        store.refusing = True
        lock._seen_held_at = float("-inf")  # due for a look, as after LOCK_CHECK_S
        with pytest.raises(DlqError, match=r"could not read the replay lock .*ValueError"):
            lock.check()
    finally:
        lock.release()


def test_advancing_a_lock_the_store_fails_to_read_leaves_its_earlier_offsets(tmp_path: Path) -> None:
    """Raised bare after a batch of markers, it went past the replay's handling as above; a store that
    is away leaves the earlier offsets, which a takeover reads from, only further."""
    store = LockReadRefused(tmp_path)
    lock = _ReplayLock(store, _dlq_topic(), {0: 5})
    assert lock.acquire() is None
    try:
        store.refusing = True
        lock.advance({0: 9})
        store.refusing = False
        assert json.loads(store.get_bytes(lock.key))["original_from"] == {"0": 5}
    finally:
        lock.release()


class MarkersRefused(FileStore):
    """A store that raises what it does not map when a replay marker is written."""

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if key.startswith(dlq_module.REPLAY_PREFIX):
            raise ValueError("a store error the markers do not expect")
        super()._write(key, data, content_type)


def test_a_batch_of_markers_the_store_fails_stops_the_sends_as_a_replay_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised bare out of a batch, it went past the replay's handling of its failures, which skipped its
    final marking: the records acknowledged were never marked, and the next replay sent them again."""
    monkeypatch.setattr(dlq_module, "MARK_EVERY_RECORDS", 1)
    letter = dlq_module.StoredLetter(
        "sku.ingested.v1.dlq", 0, 3, b"\x01" * 32, b"\x02" * 32, "bad_input", "gate",
        "sku.ingested.v1", 7, None, None, datetime.now(UTC), "",
    )  # fmt: skip
    acknowledged: Future = Future()
    acknowledged.success(dlq_module._SentTo("sku.ingested.v1", 0, 11))
    marking = dlq_module._Marking(MarkersRefused(tmp_path))
    marking.unmarked.append(([letter], acknowledged))
    with pytest.raises(DlqError, match=r"could not write the replay markers .*ValueError"):
        marking.mark_due()


@pytest.mark.kafka
def test_a_final_marking_the_store_fails_says_what_was_republished(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replay's last batch of markers, after the sends: a store error it does not map raised bare
    out of ``skuforge dlq replay`` as a traceback, which did not say that the letter went out unmarked
    (a later replay sends it again)."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(settings, ingested_letter(settings))
    store = MarkersRefused(tmp_path)
    assert dlq_main(["replay", settings.topic_name(SKU_INGESTED)], settings=settings, store=store) == 1
    err = capsys.readouterr().err
    assert "republished 1 dead letters" in err, err
    assert "could not write their replay markers (ValueError: a store error the markers" in err, err
    topic = settings.topic_name(SKU_INGESTED)
    assert [record.value for record in read_topic(kafka_bootstrap, topic, expect=1)] == [b'{"x": 1}']
    assert not list(store.list_keys(dlq_module.REPLAY_LOCK_PREFIX))  # the lock released


class HeartbeatAway(FileStore):
    """A store that takes the lock and the markers but is away for the heartbeat."""

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if key.endswith(".alive"):
            raise TransientError("the store is away for the heartbeat")
        super()._write(key, data, content_type)


def test_a_replay_whose_heartbeat_the_store_keeps_refusing_stops_before_its_lock_looks_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It retried without limit: with only the heartbeat failing (the markers written), its lock looked
    stale after LOCK_STALE_S, and a second replay took it over and sent the letters again beside it."""
    ticks = itertools.count()
    monkeypatch.setattr(dlq_module, "_alive_clock", lambda: next(ticks) * 5.0)  # 5 s a look
    said = _heartbeat_stopped(HeartbeatAway(tmp_path), monkeypatch)
    assert re.search(r"could not write its heartbeat for \d+s .*away.*; stopped here", said), said


class LockAway(FileStore):
    """A store that takes every write but is away whenever the lock is read."""

    def _read_versioned(self, key: str) -> tuple[bytes, str]:
        if key.startswith(dlq_module.REPLAY_LOCK_PREFIX) and key.endswith(".json"):
            raise TransientError("the store is away for the lock")
        return super()._read_versioned(key)


def test_a_replay_that_cannot_read_its_lock_gives_up_as_when_its_heartbeat_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat is written only after a look that finds the lock this replay's: with every look
    failing, and every write taken, no heartbeat is written and the lock looks stale after LOCK_STALE_S
    all the same. Those looks count towards LOCK_GIVE_UP_S: a replay busy flushing (no send, so no
    ``check`` of its own) stops at its next send before a second replay takes its lock over. It says
    that the lock could not be read: it said its heartbeat could not be written, which was never tried."""
    monkeypatch.setattr(dlq_module, "LOCK_REFRESH_S", 0.01)
    ticks = itertools.count()
    monkeypatch.setattr(dlq_module, "_alive_clock", lambda: next(ticks) * 5.0)  # 5 s a look
    store = LockAway(tmp_path)
    lock = _ReplayLock(store, _dlq_topic(), {})
    assert lock.acquire() is None
    try:
        assert lock._refresher is not None
        lock._refresher.join(timeout=30)  # a heartbeat that retries on is the test's failure, not a hang
        with pytest.raises(DlqError, match=r"could not be read for \d+s .*away for the lock"):
            lock.check()
        assert not store.exists(lock._heartbeat_key(lock.holder["run"]))
    finally:
        lock.release()


class LockUnreadable(FileStore):
    """A store that takes every write but raises what it does not map whenever the lock is read."""

    def _read_versioned(self, key: str) -> tuple[bytes, str]:
        if key.startswith(dlq_module.REPLAY_LOCK_PREFIX) and key.endswith(".json"):
            raise ValueError("a store error the lock's look does not expect")
        return super()._read_versioned(key)


def test_a_replay_whose_look_at_its_lock_fails_unexpectedly_says_the_lock_could_not_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said its heartbeat could not be written, though the look before the heartbeat failed and no
    heartbeat was tried: an operator checked the wrong object's permissions."""
    said = _heartbeat_stopped(LockUnreadable(tmp_path), monkeypatch)
    assert re.search(r"could not be read \(ValueError: .*look does not expect\); stopped here", said), said
    assert "heartbeat" not in said.partition("; stopped here")[0], said


def test_a_folder_at_the_lock_is_named_not_retried(tmp_path: Path) -> None:
    """put_new finds something there and a read finds no object, every time: 'try again' sent its user
    round the same refusal. The registration lock of adapters spun on it for good (shared/generation)."""
    store = FileStore(tmp_path / "store")
    dlq_topic = _dlq_topic()
    (store.root / "dlq-replay-locks" / f"{dlq_topic}.json").mkdir(parents=True)
    with pytest.raises(
        DlqError, match=r"could not take the replay lock .*is no object stands there .*remove it"
    ):
        _ReplayLock(store, dlq_topic, {}).acquire()


class ReleaseUnderWay(FileStore):
    """A store on which another replay's release of the lock runs until ``now_s`` (moved on by the
    lock's pauses) reaches ``release_ends_s``: until then a take is refused and a read finds no object
    (S3's 409 for a conditional write while a conditional delete of the key is under way)."""

    def __init__(self, root: Path, release_ends_s: float) -> None:
        super().__init__(root)
        self.now_s = 0.0
        self.release_ends_s = release_ends_s
        self.tried_at: list[float] = []

    def pause(self, seconds: float) -> None:
        self.now_s += seconds

    def _write_new(self, key: str, data: bytes, content_type: str) -> bool:
        if key.startswith(dlq_module.REPLAY_LOCK_PREFIX):
            self.tried_at.append(self.now_s)
            if self.now_s < self.release_ends_s:
                return False
        return super()._write_new(key, data, content_type)


def test_a_lock_being_released_is_taken_once_the_release_ends_not_called_a_folder(tmp_path: Path) -> None:
    """The three tries followed each other at once: a release that had not ended within them (a
    millisecond) was 'something that is no object stands there (a folder...); remove it'."""
    store = ReleaseUnderWay(tmp_path / "store", release_ends_s=0.1)
    lock = _ReplayLock(store, _dlq_topic(), {}, pause=store.pause)
    assert lock.acquire() is None
    lock.release()
    assert len(store.tried_at) > 1
    assert store.tried_at[-1] - store.tried_at[0] >= 0.1
