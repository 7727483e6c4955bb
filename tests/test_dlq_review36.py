"""The replay lock of `skuforge dlq replay` when replays overlap: takeovers that race, and a replay that
was paused while another took its lock over.

Review 36: two replays taking over one stale lock at once could both win (each checked the lock was
still the stale one, then deleted whatever lock was there and created its own), and a replay paused for
longer than LOCK_STALE_S went on sending after its lock was taken over until its heartbeat thread next
looked (LOCK_REFRESH_S later).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import SKU_INGESTED
from shared import dlq as dlq_module
from shared.dlq import DlqError, _ReplayLock
from shared.store import FileStore, ObjectStore
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic
from tests.support.dlq import small_letters
from tests.support.s3 import file_or_s3_store


def _gone_pid() -> int:
    """The pid of a process of this machine that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _killed_here(pid: int) -> dict[str, Any]:
    """The lock of a replay killed on this machine (its process is gone): stale at once."""
    return {
        "run": "killed",
        "host": dlq_module.socket.gethostname(),
        "pid_namespace": dlq_module._pid_namespace(),
        "pid": pid,
        "started_at": "2026-12-01T00:00:00+00:00",
    }


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path)


def test_two_replays_taking_over_one_stale_lock_at_once_only_one_holds_it(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replays find one killed replay's lock at once. The second takes it over while the first is
    between finding it stale and taking it: before, the first then removed the second's lock and put
    its own, and both ran, each sending every letter. Now the takeover is a compare-and-swap on the lock
    it found stale: the first finds the lock changed, and is refused naming the second."""
    dlq_topic = f"t{uuid.uuid4().hex[:8]}.sku.ingested.v1.dlq"
    key = f"dlq-replay-locks/{dlq_topic}.json"
    assert store.put_new(key, json.dumps(_killed_here(_gone_pid())).encode())
    first = _ReplayLock(store, dlq_topic, {})
    second = _ReplayLock(store, dlq_topic, {})
    raced: list[str] = []

    def second_takes_it_first(take: Any) -> Any:
        def taking(*args: Any, **kwargs: Any) -> Any:
            if args and args[0] == key and not raced:
                raced.append("second")
                assert second.acquire() is not None  # it took the killed replay's lock over
            return take(*args, **kwargs)

        return taking

    # The first replay's takeover, whichever way it writes the lock it found stale.
    monkeypatch.setattr(store, "delete", second_takes_it_first(store.delete))
    if hasattr(store, "replace_if"):
        monkeypatch.setattr(store, "replace_if", second_takes_it_first(store.replace_if))
    try:
        with pytest.raises(DlqError, match=f"another replay of {dlq_topic} is running: pid {os.getpid()}"):
            first.acquire()
        assert raced == ["second"]
        assert json.loads(store.get_bytes(key))["run"] == second.holder["run"]
    finally:
        second.release()
        first.release()
    assert not store.exists(key)


@pytest.mark.kafka
def test_a_replay_paused_past_its_lock_sends_nothing_once_it_was_taken_over(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay paused for longer than LOCK_STALE_S (a suspended laptop, a stopped process) has its lock
    taken over meanwhile. Its heartbeat thread looks every LOCK_REFRESH_S, so it went on sending (up to
    ~10 s) alongside the replay that took over. The sender now checks the lock itself before a send once
    its last check is older than LOCK_CHECK_S on a clock that counts the pause: it stops before its next
    send, and the other replay's lock is left in place."""
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 3)
    topic = settings.topic_name(SKU_INGESTED)
    store = FileStore(tmp_path)
    lock_dir = tmp_path / "dlq-replay-locks"
    paused_s = [0.0]
    clock = getattr(dlq_module, "_alive_clock", dlq_module.time.monotonic)
    took_over: list[_ReplayLock] = []
    read = dlq_module.original_record

    def paused_before_the_second(letter: Any, store_: Any) -> Any:
        if letter.original_offset == 1 and not took_over:
            # This replay stops here for LOCK_STALE_S and more: its lock and heartbeat age, and another
            # replay takes the lock over.
            paused_s[0] = dlq_module.LOCK_STALE_S + 5
            then = dlq_module.time.time() - paused_s[0]
            for lock_file in lock_dir.iterdir():
                os.utime(lock_file, (then, then))
            other = _ReplayLock(store, f"{topic}.dlq", {})
            assert other.acquire() is not None
            took_over.append(other)
        return read(letter, store_)

    # Its heartbeat thread does not look again while it runs: only the sender's own check can see it.
    monkeypatch.setattr(dlq_module, "LOCK_REFRESH_S", 3600.0)
    monkeypatch.setattr(dlq_module, "_alive_clock", lambda: clock() + paused_s[0], raising=False)
    monkeypatch.setattr(dlq_module, "original_record", paused_before_the_second)
    try:
        assert dlq_main(["replay", topic], settings=settings, store=store) == 1
        assert "was taken over by another replay" in capsys.readouterr().err
        assert [r.value for r in read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)] == values[:1]
        assert (
            json.loads(store.get_bytes(f"dlq-replay-locks/{topic}.dlq.json"))["run"]
            == took_over[0].holder["run"]
        )
    finally:
        for other in took_over:
            other.release()


def test_replace_if_and_delete_if_change_only_the_version_read(store: ObjectStore) -> None:
    """The lock's compare-and-swap: a write or a delete conditional on the version read succeeds while
    the object is that version, and leaves an object written since (FileStore: under a flock beside
    it; S3: If-Match on moto's server)."""
    key = f"locks/{uuid.uuid4().hex[:8]}.json"
    assert store.put_new(key, b'{"run": "a"}')
    _, first = store.get_versioned(key)
    assert store.replace_if(key, b'{"run": "b"}', first)
    assert not store.replace_if(key, b'{"run": "c"}', first)  # b's since: c took nothing over
    assert not store.delete_if(key, first)
    assert store.get_bytes(key) == b'{"run": "b"}'
    _, second = store.get_versioned(key)
    assert store.delete_if(key, second)
    assert not store.exists(key)
    assert not store.replace_if(key, b'{"run": "d"}', second)  # gone: nothing to swap
    assert not store.delete_if(key, second)
    assert not store.exists(key)
    assert list(store.list_keys("locks/")) == []  # the FileStore's flock file is hidden


@pytest.mark.kafka
def test_a_replay_killed_while_it_marks_what_a_killed_one_sent_leaves_that_to_the_next(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay A is killed after Kafka took three of its records, unmarked. Replay B takes A's lock over
    and is killed too, before it has marked A's records (they are read from where A's lock says the
    topic ended before A sent: a long read when A ran long). B's lock named where the topic ended
    before B began, after A's records, so replay C read from there, found none of A's, and sent those
    three letters again. B's lock carries A's start on now: C marks A's records, and every letter is
    sent once in all."""
    from kafka import KafkaProducer

    from shared.dlq import read_dead_letters
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 6)
    topic = settings.topic_name(SKU_INGESTED)
    dead = read_dead_letters(settings, topic)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for stored, value in zip(dead.letters[:3], values, strict=False):  # what A sent before it was killed
        producer.send(topic, value, headers=[(dlq_module.REPLAY_OF_HEADER, stored.marker_key.encode())])
    producer.flush()
    producer.close()
    store = FileStore(tmp_path)
    lock = f"dlq-replay-locks/{dead.dlq_topic}.json"
    assert store.put_new(lock, json.dumps({**_killed_here(_gone_pid()), "original_from": {"0": 0}}).encode())

    b = _ReplayLock(store, dead.dlq_topic, {0: 3})  # where the topic ended when B began
    assert b.acquire() is not None  # B took A's lock over ...
    b._stopped.set()  # ... and was killed before it marked A's records: its heartbeat stops
    assert b._refresher is not None
    b._refresher.join()
    then = dlq_module.time.time() - dlq_module.LOCK_STALE_S - 5
    for lock_file in (tmp_path / "dlq-replay-locks").iterdir():
        os.utime(lock_file, (then, then))

    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    assert "replayed 3 dead letters" in capsys.readouterr().out
    sent = sorted(record.value for record in read_topic(kafka_bootstrap, topic, expect=6, timeout_s=30))
    assert sent == sorted(values)  # each once
    assert len(list(store.list_keys("dlq-replays/"))) == 6
    assert not store.exists(lock)
