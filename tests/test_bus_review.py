"""Publisher on the real broker: every failure to publish is a TransientError, within flush_timeout_s."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from schemas.topics import SKU_INGESTED
from shared.bus import Publisher, bootstrapped_off_the_main_thread
from shared.errors import TransientError
from shared.store import open_store
from tests.support.bus import file_store_uri, isolated_settings, sku_ingested_payloads


@pytest.mark.kafka
def test_publishing_to_a_topic_that_was_never_created_is_transient_and_bounded(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """send() waits for the topic's metadata and raised a plain KafkaTimeoutError after kafka-python's
    60 s: `skuforge ingest` before `skuforge topics create` died with a traceback, and the console's
    relay logged it as an unexpected failure."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=2.0)
    payload = sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 1)[0]
    publisher = Publisher(settings, "review")
    try:
        started = time.monotonic()
        with pytest.raises(TransientError, match=f"could not publish to {settings.topic_name(SKU_INGESTED)}"):
            publisher.publish(SKU_INGESTED, payload, sku_id=payload.sku.sku_id)
        # Bounded by flush_timeout_s (2 s), not kafka-python's 60 s: 40 s tells the two apart with room
        # for a loaded machine (15 s left little for a slow producer start and metadata requests).
        assert time.monotonic() - started < 40
    finally:
        publisher.close()


def test_a_publisher_close_that_times_out_does_not_replace_the_callers_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ingest closes its publisher in a `finally`; with the broker no longer acknowledging, close()
    raised KafkaTimeoutError there and replaced IngestIncomplete (which SKUs were published) with a
    traceback. Every publish() has waited for its own acknowledgement, so close() only logs."""
    from kafka.errors import KafkaTimeoutError

    from shared.config import load_settings

    class _Stuck:
        def close(self, timeout: float | None = None) -> None:
            raise KafkaTimeoutError("Failed to flush buffered records within 5.0 secs")

    publisher = object.__new__(Publisher)
    publisher._settings = load_settings()
    publisher._producer = _Stuck()
    with pytest.raises(RuntimeError, match="the caller's own error"):
        try:
            raise RuntimeError("the caller's own error")
        finally:
            publisher.close()
    assert "KafkaTimeoutError" in caplog.text


@pytest.mark.parametrize(("replication", "min_isr"), [(1, None), (2, None), (3, "2"), (5, "2")])
def test_topics_created_with_three_replicas_keep_two_in_sync(replication: int, min_isr: str | None) -> None:
    """Producers send with acks=all; with the cluster's usual min.insync.replicas=1 an acknowledged
    sku.ingested held by one broker was lost with that broker. The README asked for 2; topics create
    did not set it."""
    from shared.bus import topic_to_create

    topic = topic_to_create("skuforge.sku.ingested.v1", 6, replication)
    assert (topic.num_partitions, topic.replication_factor) == (6, replication)
    assert (topic.topic_configs or {}).get("min.insync.replicas") == min_isr


def test_a_client_that_bootstraps_after_the_stop_is_closed_unused() -> None:
    """``make_producer`` bootstraps on a thread of its own, so that a stop while it connects reaches the
    command at once (tests/test_ingest_review.py); the producer that bootstraps after the stop must not
    be left running (its sender thread, its connection) in a command that goes on after it."""
    stop_seen = threading.Event()
    closed: list[str] = []
    close_done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stop_seen.set()
        raise KeyboardInterrupt

    def bootstrap() -> str:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)  # the stop, as it connects
        stop_seen.wait()
        return "client"

    def close(client: str) -> None:
        closed.append(client)
        close_done.set()

    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            bootstrapped_off_the_main_thread(bootstrap, close, "stand-in client")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert close_done.wait(timeout=30), "the client bootstrapped after the stop was never closed"
    assert closed == ["client"]
