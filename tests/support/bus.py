"""Helpers for tests on the real broker: isolated settings, producing, reading topics, running stages,
waiting for them (``wait_consumed``: until a group has committed every record), two members of one group.

Producing (``produce``, ``sku_ingested_payloads``) is bench/events.py's, which the benches use too.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import TopicPartition

from bench.events import produce as produce
from bench.events import sku_ingested_payloads as sku_ingested_payloads
from schemas.envelope import Envelope, derive_id
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED, Topic
from shared import bus
from shared.bus import ensure_topics, make_envelope
from shared.config import Settings, load_settings
from shared.runtime import Context, Emit, Stage
from tests.support.polling import wait_for


def isolated_settings(bootstrap: str, store_uri: str, **overrides: Any) -> Settings:
    """Settings whose topics and consumer groups no other test shares."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_namespace": f"t{tag}.",
        "consumer_group_prefix": f"g{tag}",
        "store_uri": store_uri,
        "metrics_port": 0,
        "retry_backoff_initial_s": 0.2,
        "retry_backoff_max_s": 2.0,
        "log_format": "text",
    }
    values.update(overrides)
    return load_settings(**values)


def create_topics(settings: Settings, *topics: Topic[Any], partitions: int = 3) -> None:
    """Create the topics (and DLQs) in the test's namespace."""
    ensure_topics(settings, topics, partitions=partitions)


def ingested_envelope(payload: SkuIngested) -> Envelope[SkuIngested]:
    """``payload`` as the sku.ingested event a stage reads (its id derived from the SKU's)."""
    sku_id = payload.sku.sku_id
    return make_envelope(
        SKU_INGESTED,
        payload,
        event_id=derive_id("test", sku_id),
        sku_id=sku_id,
        trace_id="t",
        producer="test",
    )


# Errors of stages running in background threads; read_topic fails fast on them instead of timing out.
_stage_errors: list[BaseException] = []


def read_topic(bootstrap: str, topic_name: str, *, expect: int, timeout_s: float = 60.0) -> list[Any]:
    """Read a topic from the start until ``expect`` records arrived (or time out), plus a short grace read."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic_name)
            if partitions is None:
                time.sleep(0.1)
        if partitions is None:
            raise AssertionError(f"topic {topic_name} does not exist")
        consumer.assign([TopicPartition(topic_name, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list[Any] = []
        grace_until: float | None = None
        while time.monotonic() < deadline:
            if _stage_errors:
                raise AssertionError("a stage running in the background failed") from _stage_errors[0]
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= expect:
                # Keep reading briefly so duplicates beyond the expected count are seen too.
                grace_until = grace_until or time.monotonic() + 1.0
                if time.monotonic() > grace_until:
                    break
        return records
    finally:
        consumer.close()


def record_count(bootstrap: str, topic_name: str) -> int:
    """Records in ``topic_name`` now, over its partitions (end less beginning offsets): exact, where
    ``read_topic(expect=0)`` reads for its one grace second and may not have fetched a record yet."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic_name, p) for p in consumer.partitions_for_topic(topic_name) or ()]
        if not partitions:
            raise AssertionError(f"topic {topic_name} does not exist")
        ends, starts = consumer.end_offsets(partitions), consumer.beginning_offsets(partitions)
        return sum(ends[tp] - starts[tp] for tp in partitions)
    finally:
        consumer.close()


@contextmanager
def running(stage: Stage) -> Iterator[Stage]:
    """Run a stage in a background thread for the duration of the block, then stop it cleanly."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            stage.run(install_signal_handlers=False)
        except BaseException as exc:
            errors.append(exc)
            _stage_errors.append(exc)

    thread = threading.Thread(target=target, name=f"stage-{stage.name}", daemon=True)
    thread.start()
    try:
        yield stage
    finally:
        stage.stop()
        thread.join(timeout=60)
        if thread.is_alive():
            raise AssertionError(f"stage {stage.name} did not stop within 60 s")
        if errors:
            _stage_errors.clear()
            raise errors[0]


def file_store_uri(path: Path) -> str:
    """A file:// URI for a temp directory."""
    return f"file://{path}"


def passthrough_members(settings: Settings, name: str) -> tuple[Stage, Stage, list[tuple[str, str]]]:
    """Two members of stage ``name``'s group, each passing sku.ingested on to passthrough.out, and the
    list of (``"first"`` or ``"second"``, event id) they append to as each handles an input."""
    handled: list[tuple[str, str]] = []
    lock = threading.Lock()

    def member(label: str) -> Stage:
        stage = Stage(name, settings=settings)

        @stage.handler(SKU_INGESTED)
        def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
            with lock:
                handled.append((label, event.event_id))
            return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]

        return stage

    return member("first"), member("second"), handled


def finished_uncommitted(stage: Stage, handled: list[tuple[str, str]], count: int = 40) -> list[str]:
    """On ``stage``, running: its commits time out from now on (its coordinator does not answer), and
    ``count`` inputs are produced and handled (``handled``: ``passthrough_members``'); returns their event
    ids, which wait uncommitted."""
    wait_for(f"{stage.name}'s consumer", lambda: stage._consumer is not None)
    consumer = stage._consumer
    assert consumer is not None

    def coordinator_away(*_args: Any, **_kwargs: Any) -> None:
        raise KafkaTimeoutError("the coordinator did not answer the offset commit")

    consumer.commit = coordinator_away
    inputs = produce(stage.settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, count)))
    wait_for("every input to be handled", lambda: len(handled) == len(inputs))
    assert stage._uncommitted, "the inputs wait for a commit"
    return inputs


def wait_consumed(
    settings: Settings, stage: str, topics: tuple[Topic[Any], ...], timeout_s: float = 90.0
) -> None:
    """Block until the stage's consumer group has committed every record of ``topics``."""
    group = f"{settings.consumer_group_prefix}.{stage}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        partitions = [
            TopicPartition(settings.topic_name(topic), partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(settings.topic_name(topic)) or ())
        ]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ends = consumer.end_offsets(partitions)
            try:
                committed = admin.list_group_offsets(group).get(group, {})
            except KafkaError:  # the group's coordinator is still being set up
                committed = {}
            behind = [tp for tp in partitions if ends[tp] > (committed[tp].offset if tp in committed else 0)]
            if not behind:
                return
            time.sleep(0.3)
        raise AssertionError(f"{group} did not consume {behind} within {timeout_s} s")
    finally:
        consumer.close()
        admin.close()


def logged_on_the_client_thread(client_id: str, arg: Exception) -> None:
    """Log ``arg`` as kafka-python logs a failed connection ("Connection failed: %s"), on the network
    thread of the client ``client_id`` (``kafka-io-<client id>``), and wait until it is logged."""

    def log() -> None:
        logging.getLogger("kafka.net.manager").error("Connection failed: %s", arg)

    thread = threading.Thread(target=log, name=f"kafka-io-{client_id}")
    thread.start()
    thread.join()


def age_last_connection_error(client_id: str, by_s: float) -> float:
    """Move the connection error kept for ``client_id`` ``by_s`` seconds into the past, as if it had been
    logged that long before; the time it was kept at before."""
    kept = bus._last_connection_error.last
    when, words = kept[client_id]
    kept[client_id] = (when - by_s, words)
    return when
