"""Dead letters of sku.ingested on the real broker, and `skuforge dlq replay` in a child process killed
part-way.

The letters are bench/events.py's (``dead_letter``), which bench/dlq_memory.py writes too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from bench.events import dead_letter, write_dead_letters
from schemas.topics import SKU_INGESTED
from shared.config import Settings

REPO = Path(__file__).resolve().parents[2]

# The CLI in a child process, each original read 0.1 s late: a long replay an operator's machine can lose.
# A second argument, when given, is its MARK_EVERY_RECORDS.
SLOW_REPLAY = textwrap.dedent(
    """
    import sys, time
    import shared.dlq as dlq
    if len(sys.argv) > 2:
        dlq.MARK_EVERY_RECORDS = int(sys.argv[2])
    read = dlq.original_record
    def slow(letter, store):
        time.sleep(0.1)
        return read(letter, store)
    dlq.original_record = slow
    from skuforge_cli.main import main
    sys.exit(main(["dlq", "replay", sys.argv[1]]))
    """
)


def ingested_letter(
    settings: Settings, offset: int = 0, value: bytes = b'{"x": 1}', **fields: Any
) -> dict[str, Any]:
    """A dead letter of ``settings``' sku.ingested carrying ``value`` inline; ``fields`` replace any."""
    return dead_letter(settings.topic_name(SKU_INGESTED), offset, value, **fields)


def write_letters(settings: Settings, *letters: dict[str, Any]) -> int:
    """``letters`` in ``settings``' DLQ of sku.ingested; the bytes written."""
    return write_dead_letters(settings.kafka_bootstrap, settings.dlq_name(SKU_INGESTED), letters)


def write_values(settings: Settings, values: Sequence[bytes]) -> int:
    """A dead letter of each of ``values``, the first read at offset 0, the next at 1, ...; the bytes
    written."""
    return write_letters(
        settings, *(ingested_letter(settings, offset, value) for offset, value in enumerate(values))
    )


def small_letters(settings: Settings, count: int) -> list[bytes]:
    """Dead letters of ``count`` small originals, ``{"n": 0}``, ``{"n": 1}``, ...; the originals."""
    values = [b'{"n": %d}' % n for n in range(count)]
    write_values(settings, values)
    return values


def numbered_records(count: int) -> list[bytes]:
    """``record-0``, ``record-1``, ...: originals whose letter a replay marker names by its offset."""
    return [f"record-{offset}".encode() for offset in range(count)]


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment of a `skuforge` child process on ``settings``' broker, namespace and store."""
    env = dict(
        os.environ,
        SKUFORGE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        SKUFORGE_TOPIC_NAMESPACE=settings.topic_namespace,
        SKUFORGE_STORE_URI=settings.store_uri,
    )
    if settings.s3_endpoint_url is not None:  # moto's server (tests/support/s3.py)
        env["SKUFORGE_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


def slow_replay(settings: Settings, mark_every_records: int | None = None) -> subprocess.Popen[bytes]:
    """``SLOW_REPLAY`` of ``settings``' sku.ingested, started in a child process."""
    topic = settings.topic_name(SKU_INGESTED)
    marks = [] if mark_every_records is None else [str(mark_every_records)]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_REPLAY, topic, *marks], cwd=REPO, env=cli_env(settings)
    )


def replay_killed_part_way(settings: Settings, count: int) -> set[bytes]:
    """Runs ``SLOW_REPLAY`` of sku.ingested's ``count`` letters in a child process and SIGKILLs it (as OOM
    or a lost machine would) once half of them arrived; returns the values that had arrived."""
    topic = settings.topic_name(SKU_INGESTED)
    child = slow_replay(settings)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
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
    return arrived
