"""`skuforge dlq replay` after a replay was killed part-way through a long run, and of key_mismatch letters.

Review 37: the replay that took a killed one's lock over read the original topic from where the killed
one had begun, however long it had run (and however busy the topic was since), and marked again every
letter that one had marked already. A key_mismatch letter could not usefully be replayed: it went back
with the wrong key it came with, and was dead-lettered again. A listed letter is kept as the fields a list
or a replay reads, no longer as the whole letter (~2 kB each): its sample and marker still show them all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from schemas.envelope import DeadLetter
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared.config import Settings
from shared.dlq import REPLAY_OF_HEADER, REPLAY_STAGE_HEADER
from shared.store import FileStore, ObjectStore
from tests.support.bus import (
    create_topics,
    file_store_uri,
    ingested_envelope,
    isolated_settings,
    read_topic,
    record_count,
    running,
    sku_ingested_payloads,
)
from tests.support.dlq import ingested_letter, numbered_records, slow_replay, write_letters, write_values
from tests.support.s3 import file_or_s3_store, isolated_settings_on


def _lock_from(store: ObjectStore, lock: str) -> int:
    """Partition 0's ``original_from`` of the replay lock ``lock``; -1 when there is no lock yet."""
    if not store.exists(lock):
        return -1
    return int(json.loads(store.get_versioned(lock)[0])["original_from"]["0"])


def _delivered_unmarked(store: ObjectStore, copies: dict[int, str], since: int) -> list[int]:
    """The offsets of the replayed ``copies`` (offset: marker key) from ``since`` on whose letter has no
    marker."""
    return sorted(offset for offset, marker in copies.items() if offset >= since and not store.exists(marker))


def _kill_between_send_and_mark(
    child: subprocess.Popen[bytes], store: ObjectStore, settings: Settings, lock: str
) -> tuple[int, dict[int, str]]:
    """SIGKILLs the replay ``child`` once its lock has moved on past a few marked records and records
    it delivered after them are not marked yet (checked again with the child stopped, so what is seen
    is what it left). Returns the lock's ``original_from`` then, and every copy delivered (offset:
    marker key)."""
    topic = settings.topic_name(SKU_INGESTED)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    copies: dict[int, str] = {}

    def read_copies() -> None:
        for records in consumer.poll(timeout_ms=50).values():
            for record in records:
                copies[record.offset] = dict(record.headers)[REPLAY_OF_HEADER].decode()

    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        guard = time.monotonic() + 120  # a hung child fails the test instead of hanging it
        while child.poll() is None and time.monotonic() < guard:
            read_copies()
            moved_to = _lock_from(store, lock)
            if moved_to < 6 or not _delivered_unmarked(store, copies, moved_to):
                continue
            child.send_signal(signal.SIGSTOP)
            read_copies()
            moved_to = _lock_from(store, lock)
            if _delivered_unmarked(store, copies, moved_to):
                child.send_signal(signal.SIGKILL)
                child.wait()
                return moved_to, copies
            child.send_signal(signal.SIGCONT)  # it marked them in between: the next batch then
    finally:
        consumer.close()
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()
    raise AssertionError(
        f"the replay's lock never moved on past the records it marked (original_from "
        f"{_lock_from(store, lock)}, {len(copies)} records delivered); a replay taking it over would "
        "read them all again"
    )


@pytest.mark.kafka
@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_replay_taking_a_killed_ones_lock_over_reads_only_what_it_sent_since_its_last_markers(
    backend: str, kafka_bootstrap: str, tmp_path: Path, request: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long replay is killed (SIGKILL) after Kafka took records it had not marked yet. Its lock now
    names where its unmarked records begin, moved on after each batch of markers: the replay that takes
    the lock over reads the original topic from there, so it leaves the markers written before as they
    were, and still marks the records delivered after them. Before, the lock named where the topic
    ended when the killed replay began, and every record that replay had sent was read, and marked,
    again."""
    from skuforge_cli.dlq import main as dlq_main

    store = file_or_s3_store(request, tmp_path, backend)
    settings = isolated_settings_on(store, kafka_bootstrap, request)
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    count = 40
    write_values(settings, numbered_records(count))
    lock = f"dlq-replay-locks/{settings.dlq_name(SKU_INGESTED)}.json"

    moved_to, copies = _kill_between_send_and_mark(
        slow_replay(settings, mark_every_records=3), store, settings, lock
    )
    unmarked = _delivered_unmarked(store, copies, moved_to)
    marked_before = {copies[offset]: store.get_versioned(copies[offset])[0] for offset in range(moved_to)}

    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    capsys.readouterr()
    # The markers written before the lock moved on are the killed replay's, not written again.
    assert {marker: store.get_versioned(marker)[0] for marker in marked_before} == marked_before
    # What it delivered after them was marked by the replay that took over, not sent again.
    assert unmarked and all(store.exists(copies[offset]) for offset in unmarked)
    sends = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=count, timeout_s=30))
    assert sends == Counter(numbered_records(count))  # each once
    assert len(list(store.list_keys("dlq-replays/"))) == count
    assert not store.exists(lock)


@pytest.mark.kafka
def test_a_replayed_key_mismatch_letter_is_keyed_by_its_sku_and_handled(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreign producer keyed an event by another SKU; the stage dead-lettered it as key_mismatch.
    A bare `dlq replay` now sends it keyed by its envelope's sku_id (the letter's), so it lands on its
    SKU's partition and the stage handles it. Before, a bare replay left it as permanent, and one asked
    for with --reason key_mismatch sent the same wrong key, which was dead-lettered again."""
    from services.passthrough.stage import build_stage
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    store = build_stage(settings=settings).store
    [wrongly] = (ingested_envelope(payload) for payload in sku_ingested_payloads(store, 1))
    topic = settings.topic_name(SKU_INGESTED)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topic, key=b"SKU-OTHER", value=wrongly.model_dump_json().encode())
    producer.flush()
    producer.close()

    with running(build_stage(settings=settings)):
        [record] = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=60)
        assert DeadLetter.model_validate_json(record.value).reason == "key_mismatch"
        assert dlq_main(["replay", topic], settings=settings, store=FileStore(tmp_path)) == 0
        assert "replayed 1 dead letters" in capsys.readouterr().out
        [output] = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=60)

    assert json.loads(output.value)["sku_id"] == wrongly.sku_id
    copies = read_topic(kafka_bootstrap, topic, expect=2, timeout_s=30)
    assert [(copy.key, copy.value) for copy in copies] == [
        (b"SKU-OTHER", wrongly.model_dump_json().encode()),  # as the foreign producer sent it
        (wrongly.sku_id.encode(), wrongly.model_dump_json().encode()),  # the replay
    ]
    # Handled, not dead-lettered again: counted, not read, once the stage has stopped, so a slow reader
    # cannot see fewer letters than there are.
    assert record_count(kafka_bootstrap, settings.dlq_name(SKU_INGESTED)) == 1


@pytest.mark.kafka
def test_a_key_mismatch_letter_that_names_no_sku_is_not_replayed_and_named(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key_mismatch letter without a sku_id (not one the runtime writes: a hand-written or foreign
    letter) has no key to be sent with: it is named as not replayed, unmarked, and the other letters go."""
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(
        settings,
        ingested_letter(settings, 0, b'{"a": 1}', reason="key_mismatch", original_key_b64="U0tVLU9USEVS"),
        ingested_letter(settings, 1, b'{"b": 2}'),
    )
    topic = settings.topic_name(SKU_INGESTED)

    assert dlq_main(["replay", topic], settings=settings, store=FileStore(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "1 dead letter was not replayed, the others were" in err
    assert "a key_mismatch letter names no sku_id to key its record by" in err
    assert record_count(kafka_bootstrap, topic) == 1  # the command has ended: counted, not read for 5 s
    assert [record.value for record in read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)] == [
        b'{"b": 2}'
    ]
    assert len(list(FileStore(tmp_path).list_keys("dlq-replays/"))) == 1


@pytest.mark.kafka
def test_a_listed_letter_keeps_only_the_detail_its_sample_shows(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A letter's detail may be 4000 characters (schemas/envelope.py), and `dlq list` and `dlq replay`
    held each letter's whole detail for the run, though only a few samples show it, cut to 300: a DLQ of
    many such letters took some 6 kB a letter instead of some 2.4 (tracemalloc). The listing keeps what
    a sample shows."""
    from shared.dlq import read_dead_letters
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    details = [f"{offset:04d}" * 1000 for offset in range(4)]
    write_letters(
        settings, *(ingested_letter(settings, offset, detail=d) for offset, d in enumerate(details))
    )
    topic = settings.topic_name(SKU_INGESTED)

    dead = read_dead_letters(settings, topic)
    assert [stored.detail for stored in dead.letters] == [d[:300] for d in details]
    assert dlq_main(["list", topic, "--json"], settings=settings, store=FileStore(tmp_path)) == 0
    samples = json.loads(capsys.readouterr().out)["reasons"]["object_missing"]["samples"]
    assert [sample["detail"] for sample in samples] == [d[:300] for d in details[:3]]


@pytest.mark.kafka
def test_a_listed_letter_still_shows_and_marks_every_field_it_was_written_with(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listed letter is kept as the few fields a list or a replay reads (``StoredLetter``), no longer as
    the whole DeadLetter (~2 kB a letter, ~2 GB for a DLQ of a million): its sample still shows each of
    them as written (the failed_at with its own offset), and its replay still sends the stage's header
    and marks the letter with its reason, event_id and sku_id."""
    from skuforge_cli.dlq import main as dlq_main

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    written = ingested_letter(
        settings,
        7,
        event_id="0f6c1a7e-evt",
        sku_id="SKU-SHOWN",
        stage="passthrough",
        failed_at="2026-12-01T14:00:00+02:00",
        detail="photo gone: s3://bucket/sku/SKU-SHOWN/1.png",
    )
    write_letters(settings, written)
    topic = settings.topic_name(SKU_INGESTED)
    store = FileStore(tmp_path)

    assert dlq_main(["list", topic, "--json"], settings=settings, store=store) == 0
    [sample] = json.loads(capsys.readouterr().out)["reasons"]["object_missing"]["samples"]
    assert sample == {
        "at": "0@0",
        "event_id": "0f6c1a7e-evt",
        "sku_id": "SKU-SHOWN",
        "stage": "passthrough",
        "failed_at": "2026-12-01T14:00:00+02:00",
        "detail": "photo gone: s3://bucket/sku/SKU-SHOWN/1.png",
    }

    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    [copy] = read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)
    assert (copy.value, dict(copy.headers)[REPLAY_STAGE_HEADER]) == (b'{"x": 1}', b"passthrough")
    [marker_key] = store.list_keys("dlq-replays/")
    marker = json.loads(store.get_versioned(marker_key)[0])
    assert (marker["reason"], marker["event_id"], marker["sku_id"]) == (
        "object_missing",
        "0f6c1a7e-evt",
        "SKU-SHOWN",
    )
    assert marker["republished"] == {"topic": topic, "partition": 0, "offset": 0}


@pytest.mark.kafka
def test_a_record_the_broker_refuses_is_counted_and_its_reason_named_unmarked(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay no longer keeps every send's future to its end: each batch of markers counts what it
    resolved. A record the broker refuses (over the topic's max.message.bytes) is still counted as not
    acknowledged, its reason named, and its letter left unmarked; the command exits 1."""
    from kafka.admin import NewTopic

    from skuforge_cli.dlq import main as dlq_main
    from tests.support.kafka import session_admin

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    topic = settings.topic_name(SKU_INGESTED)
    session_admin(kafka_bootstrap).create_topics(
        [
            NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "1000"}),
            NewTopic(settings.dlq_name(SKU_INGESTED), 1, 1),
        ]
    )
    write_letters(settings, ingested_letter(settings, 0, b'{"x": "' + b"y" * 3000 + b'"}'))

    assert dlq_main(["replay", topic], settings=settings, store=FileStore(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "replay failed: 1 of 1 records were not acknowledged (" in err
    assert "MessageSizeTooLargeError" in err
    assert list(FileStore(tmp_path).list_keys("dlq-replays/")) == []
