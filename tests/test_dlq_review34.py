"""`skuforge dlq replay` killed part-way: what it had sent and marked is not sent again."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import SKU_INGESTED
from shared.config import Settings
from shared.store import open_store
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic
from tests.support.dlq import numbered_records, replay_killed_part_way, write_values


@pytest.fixture
def acknowledged_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each replayed record acknowledged before the next original is read (the real producer, flushed
    after each send), and a batch of markers due at every record: the batches this file is about."""
    from shared import dlq as dlq_module
    from shared.bus import make_producer

    def flushing_producer(settings: Settings, client_id: str) -> Any:
        producer = make_producer(settings, client_id)
        real_send = producer.send

        def send(topic: str, *args: Any, **kwargs: Any) -> Any:
            future = real_send(topic, *args, **kwargs)
            producer.flush()
            return future

        producer.send = send
        return producer

    monkeypatch.setattr(dlq_module, "make_producer", flushing_producer)
    monkeypatch.setattr(dlq_module, "MARK_EVERY_RECORDS", 1)


@pytest.mark.kafka
def test_a_replay_killed_part_way_is_not_sent_again_for_what_it_had_marked(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The markers were written only once the producer was closed, at the very end: a replay killed
    (SIGKILL, OOM, a lost machine) after hours of sends left none, and the next run republished every
    record it had delivered. They are written as the acknowledgements arrive now, and the next run sends
    only what was not marked."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    count = 60
    write_values(settings, numbered_records(count))
    arrived = replay_killed_part_way(settings, count)
    assert len(arrived) < count

    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    marked = {
        f"record-{int(key.rsplit('/', 1)[1].split('-')[1])}".encode()
        for key in store.list_keys("dlq-replays/")
    }
    assert marked, f"{len(arrived)} records were delivered, and none was marked when the replay was killed"
    assert marked <= arrived  # only what was acknowledged

    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    # At most the unmarked: it also marks, and skips, what the killed one delivered after its last batch
    # (test_dlq_review35.py: test_a_replay_after_one_was_killed_sends_nothing_that_one_had_delivered).
    replayed = re.search(r"replayed (\d+) dead letters", capsys.readouterr().out)
    assert replayed is not None and int(replayed.group(1)) <= count - len(marked)
    sends = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=count, timeout_s=30))
    assert set(sends) == set(numbered_records(count))
    assert {value for value, times in sends.items() if times > 1}.isdisjoint(marked)  # marked: sent once


@pytest.mark.kafka
def test_a_store_that_refuses_a_batch_of_markers_stops_the_replay_there(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], acknowledged_at_once: None
) -> None:
    """Markers written as the replay goes: when the store refuses a batch, the replay stops instead of
    sending the rest of the DLQ unmarked (which the next run would send again), and says so."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "dlq-replays").write_bytes(b"")  # every marker write under it fails
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    write_values(settings, numbered_records(3))
    assert (
        dlq_main(
            ["replay", topic],
            settings=settings,
            store=open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"),
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "republished 1 dead letters" in err and "could not write their replay markers" in err
    assert [r.value for r in read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)] == [b"record-0"]


@pytest.mark.kafka
@pytest.mark.usefixtures("signals_as_from_a_shell")
def test_a_ctrl_c_while_a_batch_of_markers_is_written_still_marks_the_batch(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], acknowledged_at_once: None
) -> None:
    """Ctrl-C cuts a batch of markers short, in the middle of the sends: the replay stops, the batch is
    written whole before it exits, and the next run sends only the records never sent."""
    from schemas.common import ObjectRef
    from shared.store import FileStore

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    write_values(settings, numbered_records(3))
    stopped: list[str] = []

    class InterruptedStore(FileStore):
        def put_json(self, key: str, obj: Any) -> ObjectRef:
            if key.startswith("dlq-replays/") and not stopped:
                stopped.append(key)
                os.kill(os.getpid(), signal.SIGINT)  # its handler runs in this thread, at once
            return super().put_json(key, obj)

    store = InterruptedStore(tmp_path)
    assert dlq_main(["replay", topic], settings=settings, store=store) == 130
    assert "interrupted: 1 of 3 records were acknowledged and are marked" in capsys.readouterr().err
    assert len(list(store.list_keys("dlq-replays/"))) == 1
    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    assert "replayed 2 dead letters" in capsys.readouterr().out
    sends = Counter(r.value for r in read_topic(kafka_bootstrap, topic, expect=3, timeout_s=30))
    assert sends == Counter(numbered_records(3))  # each once
