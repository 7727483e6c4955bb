"""`skuforge dlq replay` killed part-way: what it had sent and marked is not sent again."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from schemas.topics import SKU_INGESTED
from shared.config import Settings
from shared.store import open_store
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic
from tests.test_dlq_review import signals_as_from_a_shell  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent

# The CLI in a child process, each original read 0.1 s late: a long replay an operator's machine can lose.
SLOW_REPLAY = textwrap.dedent(
    """
    import sys, time
    import shared.dlq as dlq
    read = dlq.original_record
    def slow(letter, store):
        time.sleep(0.1)
        return read(letter, store)
    dlq.original_record = slow
    from skuforge_cli.main import main
    sys.exit(main(["dlq", "replay", sys.argv[1]]))
    """
)


def _write_letters(settings: Settings, count: int) -> None:
    topic = settings.topic_name(SKU_INGESTED)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for offset in range(count):
        letter = {
            "reason": "object_missing",
            "detail": "photo gone",
            "error_class": "BadInput",
            "stage": "passthrough",
            "original_topic": topic,
            "original_partition": 0,
            "original_offset": offset,
            "original_value_b64": base64.b64encode(f"record-{offset}".encode()).decode(),
            "failed_at": datetime.now(UTC).isoformat(),
        }
        producer.send(settings.dlq_name(SKU_INGESTED), json.dumps(letter).encode())
    producer.flush()
    producer.close()


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
    _write_letters(settings, count)
    env = dict(
        os.environ,
        SKUFORGE_KAFKA_BOOTSTRAP=kafka_bootstrap,
        SKUFORGE_TOPIC_NAMESPACE=settings.topic_namespace,
        SKUFORGE_STORE_URI=settings.store_uri,
    )
    child = subprocess.Popen([sys.executable, "-c", SLOW_REPLAY, topic], cwd=REPO, env=env)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, group_id=None)
    arrived: set[bytes] = set()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        guard = time.monotonic() + 120  # a hung child fails the test instead of hanging it
        while len(arrived) < count // 2 and child.poll() is None and time.monotonic() < guard:
            for records in consumer.poll(timeout_ms=100).values():
                arrived.update(record.value for record in records)
    finally:
        consumer.close()
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the replay ended before it was killed"
    assert len(arrived) < count

    store = open_store(settings.store_uri)
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
    assert set(sends) == {f"record-{offset}".encode() for offset in range(count)}
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
    _write_letters(settings, 3)
    assert dlq_main(["replay", topic], settings=settings, store=open_store(settings.store_uri)) == 1
    err = capsys.readouterr().err
    assert "republished 1 dead letters" in err and "could not write their replay markers" in err
    assert [r.value for r in read_topic(kafka_bootstrap, topic, expect=1, timeout_s=10)] == [b"record-0"]


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
    _write_letters(settings, 3)
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
    sends = Counter(r.value for r in read_topic(kafka_bootstrap, topic, expect=3, timeout_s=10))
    assert sends == Counter(f"record-{offset}".encode() for offset in range(3))  # each once
