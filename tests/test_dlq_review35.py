"""`skuforge dlq list|replay` on a large dead-letter topic, and replays that overlap.

Review 35: the letters were all held in memory with their inline originals (up to ~350 kB each) before
anything was listed or replayed, so the memory grew with the topic's bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition

from bench.events import numbered_original
from schemas.envelope import DLQ_INLINE_MAX_BYTES
from schemas.topics import SKU_INGESTED
from shared.dlq import read_dead_letters, replay
from shared.store import ObjectStore, open_store
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic, record_count
from tests.support.dlq import (
    REPO,
    cli_env,
    numbered_records,
    replay_killed_part_way,
    small_letters,
    write_values,
)
from tests.support.s3 import file_or_s3_store

MB = 2**20
# read_dead_letters in a process of its own: the RSS before the read (imports done, the topic looked
# up) and the high-water mark over the read (reset before it: /proc/self/clear_refs), in kB.
READ_IN_A_CHILD = textwrap.dedent(
    """
    import json, sys
    from shared.config import load_settings
    from shared.dlq import read_dead_letters, resolve_topics

    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    settings = load_settings()
    resolve_topics(settings, sys.argv[1])
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the high-water mark starts again from the RSS now
    before = status_kb("VmRSS")
    dead = read_dead_letters(settings, sys.argv[1])
    peak = status_kb("VmHWM")
    print(json.dumps({"letters": len(dead.letters), "rss_before_kb": before, "peak_rss_kb": peak}))
    """
)


def _large_value(offset: int) -> bytes:
    """An original as large as a letter carries inline, different for each letter."""
    return numbered_original(offset, DLQ_INLINE_MAX_BYTES)


@pytest.mark.kafka
def test_reading_a_dlq_holds_what_one_fetch_brings_not_every_letters_original(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Every letter was kept with its inline original: a DLQ of hundreds of thousands of letters of up to
    ~350 kB needed that many times the memory to be listed or replayed. The letters are kept without
    their bytes now; what the read adds to the process (its peak RSS over the RSS before it, in a
    child process of its own) is what the consumer fetches at a time (1 MB a partition), not the topic."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    written = write_values(settings, [_large_value(offset) for offset in range(120)])
    assert written > 40 * MB

    child = subprocess.run(
        [sys.executable, "-c", READ_IN_A_CHILD, settings.topic_name(SKU_INGESTED)],
        cwd=REPO,
        env=cli_env(settings),
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(child.stdout)
    assert measured["letters"] == 120
    grown = measured["peak_rss_kb"] * 1024 - measured["rss_before_kb"] * 1024
    assert grown < written / 3, f"reading {written / MB:.1f} MB of letters added {grown / MB:.1f} MB"


@pytest.mark.kafka
def test_a_replay_sends_each_original_whole_from_the_letter_read_again(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replay reads each letter again for its original bytes (the listing keeps none): every
    original arrives whole, once, on three partitions."""
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=3)
    values = [_large_value(offset) for offset in range(6)] + [b'{"small": %d}' % n for n in range(6)]
    write_values(settings, values)
    topic = settings.topic_name(SKU_INGESTED)
    assert dlq_main(["replay", topic], settings=settings) == 0
    assert "replayed 12 dead letters" in capsys.readouterr().out
    sent = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=12, timeout_s=30))
    assert sent == Counter(values)


@pytest.mark.kafka
def test_a_letter_deleted_from_the_dlq_after_it_was_listed_is_named_and_the_others_replayed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The replay reads a letter's original from the DLQ when it sends it: one that retention deleted
    since the listing is named as not replayed (its bytes are no longer anywhere), never sent as
    another record's bytes, and the letters after it are replayed."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 5)
    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    dead = read_dead_letters(settings, settings.topic_name(SKU_INGESTED))
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(dead.dlq_topic, 0): 2})  # as retention would
    finally:
        admin.close()

    report = replay(settings, store, dead)
    assert sorted(f"{stored.partition}@{stored.offset}" for stored, _ in report.unreadable) == ["0@0", "0@1"]
    assert all("is no longer in" in why for _, why in report.unreadable)
    assert [stored.offset for stored in report.republished] == [2, 3, 4]
    topic = settings.topic_name(SKU_INGESTED)
    assert sorted(r.value for r in read_topic(kafka_bootstrap, topic, expect=3, timeout_s=30)) == values[2:]
    assert sorted(key.rsplit("/", 1)[1].split("-")[1] for key in store.list_keys("dlq-replays/")) == [
        "2",
        "3",
        "4",
    ]


@pytest.mark.kafka
def test_a_second_replay_while_one_runs_is_refused_and_no_letter_is_sent_twice(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each replay read the markers once, at its start: a second replay started while the first ran
    found none of the first's, and every letter was sent twice (once each). The second is refused now,
    naming the first, and the first sends each letter once."""
    from shared.store import FileStore
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 5)
    topic = settings.topic_name(SKU_INGESTED)
    second: list[int] = []

    class SecondReplayMeanwhile(FileStore):
        """The first replay's store: as it reads the markers, a second replay of the topic runs."""

        def list_addressable(self, prefix: str = "") -> Any:
            keys = list(super().list_addressable(prefix))
            if prefix.startswith("dlq-replays/") and not second:
                second.append(dlq_main(["replay", topic], settings=settings, store=FileStore(tmp_path)))
            return iter(keys)

    assert dlq_main(["replay", topic], settings=settings, store=SecondReplayMeanwhile(tmp_path)) == 0
    captured = capsys.readouterr()
    assert second == [1]
    assert f"another replay of {topic}.dlq is running: pid {os.getpid()}" in captured.err
    assert "replayed 5 dead letters" in captured.out
    sent = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=5, timeout_s=30))
    assert sent == Counter(values)  # each once
    assert not list(FileStore(tmp_path).list_keys("dlq-replay-locks/"))  # released


@pytest.mark.kafka
def test_a_lock_left_by_a_replay_killed_elsewhere_is_taken_over_once_stale(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay killed on another machine leaves its lock: while it is fresh (it may be running), a
    replay here is refused and sends nothing; once it was not refreshed for LOCK_STALE_S it is taken
    over, and the replay runs."""
    from shared.dlq import LOCK_STALE_S
    from shared.store import FileStore
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 3)
    topic = settings.topic_name(SKU_INGESTED)
    store = FileStore(tmp_path)
    lock = f"dlq-replay-locks/{topic}.dlq.json"
    elsewhere = {"run": "r1", "host": "another-machine", "pid": 1, "started_at": "2026-12-01T00:00:00+00:00"}
    assert store.put_new(lock, json.dumps(elsewhere).encode())

    assert dlq_main(["replay", topic], settings=settings, store=store) == 1
    assert "another replay of" in capsys.readouterr().err
    assert record_count(kafka_bootstrap, topic) == 0  # the command has ended

    then = time.time() - LOCK_STALE_S - 5  # its replay stopped refreshing it that long ago
    os.utime(tmp_path / lock, (then, then))
    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    sent = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=3, timeout_s=30))
    assert sent == Counter(values)
    assert not store.exists(lock)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path)


def test_put_new_writes_only_where_no_object_is(store: ObjectStore) -> None:
    """The replay lock's write: of two writes to one key, the second finds the first's object and
    leaves it (FileStore: a link; S3: If-None-Match, here on moto's server)."""
    assert store.put_new("locks/a.json", b'{"first": 1}')
    assert not store.put_new("locks/a.json", b'{"second": 1}')
    assert store.get_bytes("locks/a.json") == b'{"first": 1}'
    store.delete("locks/a.json")
    assert store.put_new("locks/a.json", b'{"third": 1}')


@pytest.mark.kafka
def test_a_replay_after_one_was_killed_sends_nothing_that_one_had_delivered(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay killed (SIGKILL) between Kafka's acknowledgements and their batch of markers: the next
    replay sent those records again. It takes over the killed one's lock now, reads what that one sent
    (each record names its letter, header skuforge-replay-of) from where its lock says the topic
    ended, and marks those letters first: every record is sent once in all."""
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    count = 40
    write_values(settings, numbered_records(count))
    replay_killed_part_way(settings, count)

    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    capsys.readouterr()
    sends = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=count, timeout_s=30))
    assert sends == Counter(numbered_records(count))  # each once
    assert len(list(store.list_keys("dlq-replays/"))) == count


@pytest.mark.kafka
def test_the_replay_lock_works_on_s3_too(
    kafka_bootstrap: str, tmp_path: Path, s3_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """On S3 (moto's server) the lock is a conditional write: a replay is refused while another
    replay's lock is there, runs once it is gone, and leaves no lock of its own."""
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 2)
    topic = settings.topic_name(SKU_INGESTED)
    lock = f"dlq-replay-locks/{topic}.dlq.json"
    assert s3_store.put_new(lock, json.dumps({"run": "r1", "host": "another-machine", "pid": 7}).encode())

    assert dlq_main(["replay", topic], settings=settings, store=s3_store) == 1
    assert "another replay of" in capsys.readouterr().err
    s3_store.delete(lock)  # that replay ended
    assert dlq_main(["replay", topic], settings=settings, store=s3_store) == 0
    sent = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=2, timeout_s=30))
    assert sent == Counter(values)
    assert not s3_store.exists(lock)
    assert len(list(s3_store.list_keys("dlq-replays/"))) == 2


@pytest.mark.kafka
def test_a_replay_whose_lock_was_taken_over_stops_sending(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay paused longer than LOCK_STALE_S (a suspended machine) has its lock taken over by
    another: when it goes on, its refresh finds the other's lock, and it stops before its next send
    instead of sending alongside the other; the other's lock is left in place."""
    import threading

    from shared import dlq as dlq_module
    from shared.store import FileStore
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 3)
    topic = settings.topic_name(SKU_INGESTED)
    lock = f"dlq-replay-locks/{topic}.dlq.json"
    store = FileStore(tmp_path)
    other = json.dumps({"run": "r2", "host": "another-machine", "pid": 7}).encode()
    read = dlq_module.original_record
    reads: list[int] = []

    def refreshing() -> bool:
        return any(thread.name == "dlq-replay-lock" for thread in threading.enumerate())

    def taken_over_before_the_second(letter: Any, store_: Any) -> Any:
        reads.append(letter.original_offset)
        if len(reads) == 2:
            store.put_bytes(lock, other)  # the other replay took the lock over
            guard = time.monotonic() + 30  # a refresher that never looks fails the test, not hangs it
            while refreshing() and time.monotonic() < guard:
                time.sleep(0.01)  # until this replay's refresher has seen it and stopped
        return read(letter, store_)

    monkeypatch.setattr(dlq_module, "LOCK_REFRESH_S", 0.01)
    monkeypatch.setattr(dlq_module, "original_record", taken_over_before_the_second)
    assert dlq_main(["replay", topic], settings=settings, store=store) == 1
    assert "was taken over by another replay" in capsys.readouterr().err
    assert [r.value for r in read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)] == values[:1]
    assert store.get_bytes(lock) == other
