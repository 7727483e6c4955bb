"""`skuforge dlq replay` stopped twice: the second stop waits while the replay closes what it opened."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from schemas.topics import SKU_INGESTED
from shared import dlq as dlq_module
from shared.bus import make_producer
from shared.config import Settings
from shared.store import open_store
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic
from tests.support.dlq import ingested_letter, write_letters


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("signum", "said"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")],
    ids=["int", "term"],
)
def test_a_second_stop_while_the_replay_closes_its_dlq_reader_still_marks_what_was_delivered(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signals_as_from_a_shell: None,
    signum: int,
    said: str,
) -> None:
    """Stopped while it sent, the replay closed the reader of its DLQ before it held the stops: a second
    Ctrl-C (or SIGTERM) then cut that close short, inside the reader's generator as Python finalised
    it, which printed an "Exception ignored in: <generator object _letters_again>" traceback and lost
    the stop. The records delivered are marked either way, and the next replay sends only the others."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    original = settings.topic_name(SKU_INGESTED)
    write_letters(settings, *(ingested_letter(settings, original_offset=offset) for offset in range(3)))
    stops: list[str] = []
    closed: list[str] = []
    unraisable: list[Any] = []

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

    class StoppedWhileClosing(KafkaConsumer):
        def close(self, *args: Any, **kwargs: Any) -> None:
            if stops == ["sending"]:  # the reader of the letters, left open by the first stop
                stops.append("closing")
                os.kill(os.getpid(), signum)
            super().close(*args, **kwargs)
            closed.append("closed")

    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    monkeypatch.setattr(dlq_module, "make_producer", stopped_producer)
    monkeypatch.setattr(dlq_module, "KafkaConsumer", StoppedWhileClosing)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    try:
        exited = dlq_main(["replay", original], settings=settings, store=store)
    except KeyboardInterrupt:
        exited = None  # a traceback, as before; what matters is what the next run sends
    err = capsys.readouterr().err
    assert stops == ["sending", "closing"]
    assert [repr(u.exc_value) for u in unraisable] == [], "a stop lost in a traceback"
    assert "closed" in closed, "the reader of the DLQ was not closed"
    monkeypatch.setattr(dlq_module, "make_producer", make_producer)
    monkeypatch.setattr(dlq_module, "KafkaConsumer", KafkaConsumer)
    assert exited == 128 + signum
    assert f"{said}: 1 of 3 records were acknowledged and are marked" in err
    again = dlq_main(["replay", original], settings=settings, store=store)
    assert again == 0 and "replayed 2 dead letters" in capsys.readouterr().out
    assert len(read_topic(kafka_bootstrap, original, expect=3, timeout_s=30)) == 3  # each once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # left as they were
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("signum", "said"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")],
    ids=["int", "term"],
)
def test_a_stop_between_closing_the_producer_and_writing_the_markers_waits_for_the_markers(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signals_as_from_a_shell: None,
    signum: int,
    said: str,
) -> None:
    """The stops were held while the producer closed, and again while the markers were written, but not
    in between, where the replay counts what was acknowledged: a Ctrl-C (or SIGTERM) there ended the
    command with every record delivered and none marked, and the next replay sent them all again."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    original = settings.topic_name(SKU_INGESTED)
    write_letters(settings, *(ingested_letter(settings, original_offset=offset) for offset in range(3)))
    stops: list[int] = []
    counted = dlq_module._Marking.acknowledged

    def counted_then_stopped(marking: Any) -> int:
        if not stops:
            stops.append(signum)
            os.kill(os.getpid(), signum)  # its handler runs in this thread, at once
        return counted(marking)

    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    monkeypatch.setattr(dlq_module._Marking, "acknowledged", counted_then_stopped)
    try:
        exited = dlq_main(["replay", original], settings=settings, store=store)
    except KeyboardInterrupt:
        exited = None  # a traceback, as before; what matters is what the next run sends
    err = capsys.readouterr().err
    assert stops == [signum]
    monkeypatch.setattr(dlq_module._Marking, "acknowledged", counted)
    again = dlq_main(["replay", original], settings=settings, store=store)
    assert len(read_topic(kafka_bootstrap, original, expect=3, timeout_s=30)) == 3  # each once
    assert again == 0 and "replayed 0 dead letters" in capsys.readouterr().out
    assert exited == 128 + signum
    assert f"{said}: 3 of 3 records were acknowledged and are marked" in err
