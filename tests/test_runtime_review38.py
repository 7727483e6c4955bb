"""The runtime on the real broker: a partition that backed off, moved to another member and came back."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kafka.structs import TopicPartition

from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared.errors import TransientError
from shared.runtime import Context, Emit, Stage
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    running,
    sku_ingested_payloads,
)
from tests.support.polling import wait_for


@pytest.mark.kafka
def test_a_backed_off_partition_that_moves_away_and_back_is_consumed_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """kafka-python parks the records it had fetched for a partition that is paused, and never fetches a
    partition with parked records while another partition's records are next in line; the runtime drops
    them when it resumes a partition. A partition revoked while it backed off is never resumed here:
    before, when the group handed it back, it was never fetched again, and its SKUs waited for good."""
    # A back-off longer than the test: the partition comes back only through the rebalance.
    settings = isolated_settings(
        kafka_bootstrap,
        file_store_uri(tmp_path),
        max_poll_records=1,
        retry_backoff_initial_s=600.0,
        retry_backoff_max_s=600.0,
    )
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    ingested = TopicPartition(settings.topic_name(SKU_INGESTED), 0)
    store_down = threading.Event()
    store_down.set()
    handled: list[str] = []

    first = Stage("review", settings=settings)

    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        if store_down.is_set():
            raise TransientError("the store is away")
        handled.append(event.event_id)
        return []

    first.handler(SKU_INGESTED)(handle)
    # A second input topic, whose records keep flowing while sku.ingested waits.
    first.handler(PASSTHROUGH_OUT)(handle)

    # Its sku.ingested partition only: the group moves that partition to it.
    second = Stage("review", settings=settings)

    @second.handler(SKU_INGESTED)
    def refuse(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        raise TransientError("the store is away here too")

    inputs = produce(settings, SKU_INGESTED, list(sku_ingested_payloads(first.store, 4)))
    with running(first):
        wait_for("the first input to back off", lambda: ingested in first._resume_at)
        store_down.clear()
        flowing = produce(settings, PASSTHROUGH_OUT, list(sku_ingested_payloads(first.store, 3)))
        wait_for("the other topic's inputs", lambda: set(flowing) <= set(handled))
        with running(second):
            wait_for("the partition to move", lambda: ingested in second._resume_at)
        wait_for("the partition's inputs, once it came back", lambda: set(inputs) <= set(handled), 60)
