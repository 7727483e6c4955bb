"""`skuforge dlq list|replay` on a large dead-letter topic, and replays that overlap.

Review 35: the letters were all held in memory with their inline originals (up to ~350 kB each) before
anything was listed or replayed, so the memory grew with the topic's bytes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.structs import TopicPartition

from schemas.envelope import DLQ_INLINE_MAX_BYTES
from schemas.topics import SKU_INGESTED
from shared.config import Settings
from shared.dlq import read_dead_letters, replay
from shared.store import open_store
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic

MB = 2**20
REPO = Path(__file__).resolve().parent.parent
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


def _letter(settings: Settings, offset: int, value: bytes) -> dict[str, Any]:
    """A dead letter as a stage writes it, carrying ``value`` inline."""
    return {
        "reason": "object_missing",
        "detail": "photo gone",
        "error_class": "BadInput",
        "stage": "passthrough",
        "original_topic": settings.topic_name(SKU_INGESTED),
        "original_partition": 0,
        "original_offset": offset,
        "original_value_b64": base64.b64encode(value).decode(),
        "failed_at": datetime.now(UTC).isoformat(),
    }


def _write_letters(settings: Settings, values: list[bytes]) -> int:
    """Dead letters of ``values`` in the DLQ of sku.ingested; the bytes written."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    written = 0
    for offset, value in enumerate(values):
        record = json.dumps(_letter(settings, offset, value)).encode()
        written += len(record)
        producer.send(settings.dlq_name(SKU_INGESTED), record)
    producer.flush()
    producer.close()
    return written


def _large_value(offset: int) -> bytes:
    """An original as large as a letter carries inline, different for each letter."""
    return (b"%06d" % offset) * (DLQ_INLINE_MAX_BYTES // 6)


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
    written = _write_letters(settings, [_large_value(offset) for offset in range(120)])
    assert written > 40 * MB

    env = dict(
        os.environ,
        SKUFORGE_KAFKA_BOOTSTRAP=kafka_bootstrap,
        SKUFORGE_TOPIC_NAMESPACE=settings.topic_namespace,
        SKUFORGE_STORE_URI=settings.store_uri,
    )
    child = subprocess.run(
        [sys.executable, "-c", READ_IN_A_CHILD, settings.topic_name(SKU_INGESTED)],
        cwd=REPO,
        env=env,
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
    _write_letters(settings, values)
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
    values = [b'{"n": %d}' % n for n in range(5)]
    _write_letters(settings, values)
    store = open_store(settings.store_uri)
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
