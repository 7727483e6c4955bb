"""Input events for the benchmarks on a real broker (bench/bus.py, bench/scale.py): payloads, and
producing them the way a service does; dead letters as a stage writes them (bench/dlq_memory.py).

The tests produce with the same helpers (``tests/support/bus.py``): a shipped bench does not import
the test tree, the tests may import bench.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from pydantic import BaseModel

from schemas.envelope import derive_id
from schemas.events import ReferencePhoto, SkuIngested
from schemas.topics import Topic
from shared.bus import make_envelope, make_producer
from shared.config import Settings
from shared.store import ObjectStore


def sku_ingested_payloads(store: ObjectStore, count: int, prefix: str = "SKU") -> list[SkuIngested]:
    """``count`` sku.ingested payloads sharing one small stored photo."""
    import numpy as np

    from schemas.common import SkuMetadata

    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[2:6, 2:6] = (200, 30, 30)
    image = store.put_image("fixtures/photo.png", pixels)
    return [
        SkuIngested(
            sku=SkuMetadata(sku_id=f"{prefix}-{index:05d}", name=f"Product {index}", category="soda can"),
            photos=[ReferencePhoto(photo_id="p1", image=image, original_filename="photo.png")],
        )
        for index in range(count)
    ]


def produce(
    settings: Settings, topic: Topic[Any], payloads: Sequence[BaseModel], *, raw: list[bytes] | None = None
) -> list[str]:
    """Produce enveloped payloads (and optional raw byte messages); returns the event ids in order.
    Raises ``KafkaError`` when the broker refused any of them.

    The producer is the services' own (``make_producer``): it bootstraps off the main thread, so a
    Ctrl-C while it connects stops the caller; kafka-python's bootstrap on the main thread dropped it.
    """
    producer = make_producer(settings, client_id="skuforge-bench-input")
    name = settings.topic_name(topic)
    event_ids = []
    sent = []
    try:
        for payload in payloads:
            sku_id = payload.sku.sku_id  # type: ignore[attr-defined]
            event_id = derive_id("bench", name, sku_id, payload.model_dump_json())
            envelope = make_envelope(
                topic, payload, event_id=event_id, sku_id=sku_id, trace_id=event_id, producer="bench"
            )
            sent.append(producer.send(name, key=sku_id.encode(), value=envelope.model_dump_json().encode()))
            event_ids.append(event_id)
        for value in raw or []:
            sent.append(producer.send(name, key=key_for(value), value=value))
        producer.flush(timeout=settings.flush_timeout_s)
        # flush() only logs a record the broker refused (over the topic's max.message.bytes): its id
        # was returned as produced, and the bench's round waited for input that was never there.
        if refused := [future.exception for future in sent if future.failed()]:
            first = refused[0]
            raise KafkaError(
                f"{len(refused)} of {len(sent)} records to {name} were not delivered: "
                f"{type(first).__name__}: {first}"
            ) from first
    except BaseException:
        abandon(producer)
        raise
    producer.close()
    return event_ids


def key_for(value: bytes) -> bytes:
    """The Kafka key a skuforge producer gives a record of ``value``: its envelope's ``sku_id`` (the
    runtime dead-letters an event keyed by another), or ``b"raw"`` for bytes that name no SKU."""
    try:
        envelope = json.loads(value)
    except ValueError:
        return b"raw"
    sku_id = envelope.get("sku_id") if isinstance(envelope, dict) else None
    return sku_id.encode() if isinstance(sku_id, str) else b"raw"


def abandon(producer: KafkaProducer) -> None:
    """Close ``producer`` after a failure (a send that failed, a Ctrl-C) without waiting: what is still
    pending is given up, and the error on its way out is not held up or replaced."""
    # close() flushes first, and with records pending a flush of 0 s raises before the sender thread
    # is stopped: that thread, a daemon, is then left to end with the process.
    with contextlib.suppress(KafkaTimeoutError):
        producer.close(timeout=0)


def dead_letter(original_topic: str, offset: int, value: bytes, **fields: Any) -> dict[str, Any]:
    """A dead letter's JSON fields as a stage writes them: the passthrough stage refused ``value``, read at
    ``offset`` of ``original_topic``'s partition 0, as object_missing; ``fields`` replace any of these."""
    letter: dict[str, Any] = {
        "reason": "object_missing",
        "detail": "photo gone",
        "error_class": "BadInput",
        "stage": "passthrough",
        "original_topic": original_topic,
        "original_partition": 0,
        "original_offset": offset,
        "original_value_b64": base64.b64encode(value).decode(),
        "failed_at": datetime.now(UTC).isoformat(),
    }
    letter.update(fields)
    return letter


def numbered_original(offset: int, size_bytes: int) -> bytes:
    """An original of ``size_bytes`` (rounded down to a multiple of 8) that differs for each ``offset``."""
    return (b"%08d" % offset) * (size_bytes // 8)


def write_dead_letters(bootstrap: str, dlq_topic: str, letters: Iterable[dict[str, Any]]) -> int:
    """``letters`` (``dead_letter``'s) written to ``dlq_topic`` in order, each acknowledged by every
    replica; returns the bytes written."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    written = 0
    for letter in letters:
        record = json.dumps(letter).encode()
        written += len(record)
        producer.send(dlq_topic, record)
    producer.flush()
    producer.close()
    return written
