"""`skuforge dlq replay` and the DLQ reader on the real broker: an unexpected error part-way through a
replay, and the partitions a read has reached the end of."""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.structs import TopicPartition

import shared.dlq as dlq
from schemas.envelope import DeadLetter
from schemas.topics import SKU_INGESTED
from shared.bus import make_producer
from shared.config import Settings
from shared.dlq import DlqError, read_dead_letters, replay
from shared.store import FileStore, open_store
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic, record_count
from tests.support.dlq import ingested_letter, small_letters, write_letters
from tests.support.kafka import NewTopic

pytestmark = pytest.mark.kafka


def test_an_unexpected_error_part_way_through_a_replay_still_marks_what_was_acknowledged(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a Kafka error or a DlqError let the replay mark the records Kafka acknowledged before it:
    any other (a bug, a store's error it does not map) left them unmarked, and the next replay sent them
    again. Now the replay stops naming the error, with those marked."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 3)
    topic = settings.topic_name(SKU_INGESTED)
    store = FileStore(tmp_path)
    read = dlq.original_record
    calls: list[int] = []

    def fails_at_the_third(letter: DeadLetter, store: Any) -> tuple[bytes | None, bytes]:
        calls.append(letter.original_offset)
        if len(calls) == 3:
            raise RuntimeError("an error the replay does not expect")
        return read(letter, store)

    monkeypatch.setattr(dlq, "original_record", fails_at_the_third)
    with caplog.at_level(logging.ERROR, logger="skuforge.dlq"), pytest.raises(DlqError) as stopped:
        replay(settings, store, read_dead_letters(settings, topic))
    assert "RuntimeError: an error the replay does not expect" in str(stopped.value)
    # The one line says what stopped it; the traceback, to find the bug by, is in the log.
    [logged] = [record for record in caplog.records if record.name == "skuforge.dlq"]
    assert logged.exc_info is not None and logged.exc_info[0] is RuntimeError
    assert "the 2 records acknowledged before are marked" in str(stopped.value)
    assert record_count(kafka_bootstrap, topic) == 2

    monkeypatch.setattr(dlq, "original_record", read)
    report = replay(settings, store, read_dead_letters(settings, topic))
    assert (len(report.republished), report.already_replayed) == (1, 2)
    assert record_count(kafka_bootstrap, topic) == 3  # each once: before, 5
    sent = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=3, timeout_s=30))
    assert sent == Counter(values)


def test_a_read_to_the_end_fetches_nothing_past_the_end_of_a_partition_that_was_at_its_end(
    kafka_bootstrap: str, tmp_path: Path, new_topic: NewTopic
) -> None:
    """A partition already at its end (empty, or read) when a read of a DLQ began was never paused, unlike
    one that reached it during the read: what producers wrote to it meanwhile was fetched, to be dropped.
    (The runtime's DLQs have one partition; one an operator made with more has empty ones.)"""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    name = new_topic("dlq", partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(name, value=b"a letter", partition=0).get(timeout=30)
    finally:
        producer.close()
    consumer = dlq._dlq_consumer(settings)
    try:
        partitions = [TopicPartition(name, 0), TopicPartition(name, 1)]
        consumer.assign(partitions)
        end = consumer.end_offsets(partitions)
        consumer.seek_to_beginning(*partitions)
        read = list(dlq._records_to_end(consumer, end, timeout_s=30, what=name))
        assert [record.value for record in read] == [b"a letter"]
        assert consumer.paused() == set(partitions)
    finally:
        consumer.close()


@pytest.mark.parametrize(
    ("signum", "said"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")],
    ids=["int", "term"],
)
def test_a_second_stop_while_the_replay_takes_in_the_first_still_marks_what_was_delivered(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signals_as_from_a_shell: None,
    signum: int,
    said: str,
) -> None:
    """The replay held the stops only once its ``finally`` called ``held_signals()``: a second Ctrl-C
    (or SIGTERM) whose handler ran before that (here, in the ``except`` that takes in the first) ended
    the command past the markers, and the next replay sent the record delivered again."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    original = settings.topic_name(SKU_INGESTED)
    write_letters(settings, *(ingested_letter(settings, original_offset=offset) for offset in range(3)))
    stops: list[str] = []
    real_signal_number = dlq.signal_number

    def stopped_producer(settings: Settings, client_id: str) -> Any:
        producer = make_producer(settings, client_id)
        real_send = producer.send
        sends: list[str] = []

        def send(topic: str, **record: Any) -> Any:
            sends.append(topic)
            if len(sends) == 2:  # the first stop, before the second record: the first is on its way
                stops.append("sending")
                os.kill(os.getpid(), signum)  # its handler runs in this thread, at once
            return real_send(topic, **record)

        producer.send = send
        return producer

    def stopped_again(exc: KeyboardInterrupt) -> int:
        stops.append("taking in the first")
        os.kill(os.getpid(), signum)
        return real_signal_number(exc)

    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    monkeypatch.setattr(dlq, "make_producer", stopped_producer)
    monkeypatch.setattr(dlq, "signal_number", stopped_again)
    try:
        exited = dlq_main(["replay", original], settings=settings, store=store)
    except KeyboardInterrupt:
        exited = None  # a traceback, as before; what matters is what the next run sends
    err = capsys.readouterr().err
    assert stops == ["sending", "taking in the first"]
    monkeypatch.setattr(dlq, "make_producer", make_producer)
    monkeypatch.setattr(dlq, "signal_number", real_signal_number)
    again = dlq_main(["replay", original], settings=settings, store=store)
    assert len(read_topic(kafka_bootstrap, original, expect=3, timeout_s=30)) == 3  # each once
    assert again == 0 and "replayed 2 dead letters" in capsys.readouterr().out
    assert exited == 128 + signum
    assert f"{said}: 1 of 3 records were acknowledged and are marked" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # left as they were
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
