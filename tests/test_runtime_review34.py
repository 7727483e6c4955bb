"""The runtime on the real broker: inputs finished but left uncommitted when their partition moves."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from tests.support.bus import (
    create_topics,
    file_store_uri,
    finished_uncommitted,
    isolated_settings,
    passthrough_members,
    produce,
    read_topic,
    running,
    sku_ingested_payloads,
)
from tests.support.polling import wait_for

pytestmark = pytest.mark.kafka


@pytest.mark.slow
def test_a_moved_partition_takes_its_finished_inputs_offsets_with_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The first member's commits time out (its coordinator did not answer), so the inputs it finished
    wait uncommitted; a second member then joins and takes some of its partitions. The revoked
    partitions' offsets go to the broker from the rebalance listener, so the new holder starts after
    them. They were dropped: the new holder handled every one of them again and sent its outputs twice.
    """
    # No idle retry of the failed commits within the test: only the listener can carry them.
    settings = isolated_settings(
        kafka_bootstrap,
        file_store_uri(tmp_path),
        max_poll_records=5,
        retry_backoff_initial_s=600.0,
        retry_backoff_max_s=600.0,
    )
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=4)
    first, second, handled = passthrough_members(settings, "moved")
    with running(first):
        earlier = finished_uncommitted(first, handled)

        with running(second):
            wait_for(
                "the second member to hold partitions",
                lambda: bool(second._consumer and second._consumer.assignment()),
            )
            assert second._consumer is not None
            moved = {tp.partition for tp in second._consumer.assignment()}
            # Inputs after the move: once each is handled, each member has read past what came before
            # it in its partitions.
            later = produce(
                settings, SKU_INGESTED, list(sku_ingested_payloads(first.store, 40, prefix="LATER"))
            )
            wait_for("every later input", lambda: set(later) <= {event_id for _, event_id in handled})

    twice = {event_id for event_id, count in Counter(e for _, e in handled).items() if count > 1}
    assert any(label == "second" for label, _ in handled), "the second member took partitions"
    assert not twice & set(earlier), f"{len(twice & set(earlier))} finished inputs were handled again"
    assert not twice
    # Counted by the member that handled them once the listener's commit was answered: the inputs of the
    # partitions that stayed never had a commit go through.
    inputs = read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=len(earlier) + len(later))
    on_moved = [r for r in inputs if r.partition in moved and json.loads(r.value)["event_id"] in set(earlier)]
    counted = first.metrics.messages.labels("moved", settings.topic_name(SKU_INGESTED), "ok")._value.get()
    assert on_moved and counted == len(on_moved)
