"""A stage that joined its group without partitions of a topic rejoins instead of idling forever.

kafka-python 3.0 can complete a join before it has a topic's metadata and then, at times, never
rebalances when the metadata arrives (dpkp/kafka-python#2377); the end-to-end test once waited
two minutes on a captioner holding nothing. The runtime's watchdog subscribes again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kafka.structs import TopicPartition

import shared.runtime
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared.bus import topics_held_in_group
from shared.config import load_settings
from shared.errors import TransientError
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    running,
    sku_ingested_payloads,
)


class _Cluster:
    def __init__(self) -> None:
        self.partitions: dict[str, set[int]] = {}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)


class _Consumer:
    """What ``_check_assignment`` touches of a KafkaConsumer: assignment, metadata cache, (un)subscribe."""

    def __init__(self) -> None:
        self._cluster = _Cluster()
        self.held: set[TopicPartition] = set()
        self.calls: list[str] = []
        self.config = {"group_id": "g.passthrough"}

    def assignment(self) -> set[TopicPartition]:
        return set(self.held)

    def unsubscribe(self) -> None:
        self.calls.append("unsubscribe")
        self.held = set()

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.calls.append("subscribe " + ",".join(topics))


def _check(stage: Any) -> None:
    stage._last_assignment_check = 0.0  # the check runs at most once a second; tests call it directly
    stage._check_assignment()


def test_the_watchdog_rejoins_only_when_a_topic_with_partitions_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.runtime, "REJOIN_FIRST_S", 0.0)
    stage = build_stage(settings=load_settings(store_uri=file_store_uri(tmp_path)))
    (topic,) = stage.topics
    consumer = _Consumer()
    stage._consumer = consumer
    stage._joined = True

    # The topic is unknown to the metadata cache: nothing to rejoin for (yet).
    _check(stage)
    _check(stage)
    assert consumer.calls == []

    # Held: nothing to do.
    consumer._cluster.partitions[topic] = {0, 1, 2}
    consumer.held = {TopicPartition(topic, 0)}
    _check(stage)
    _check(stage)
    assert consumer.calls == []

    # The topic has partitions and this member holds none, but another member holds them (the
    # assignor balances partitions in all, not per topic): no rejoin. Before, a second trainstore
    # replica rejoined every 20 s, without end, when it was handed whole topics.
    consumer.held = set()
    asked: list[str] = []

    def held_in_group(settings: Any, group_id: str, client_id: str) -> set[str]:
        asked.append(group_id)
        return coordinator_says()

    monkeypatch.setattr(shared.runtime, "topics_held_in_group", held_in_group)
    coordinator_says = lambda: {topic}  # noqa: E731
    for _ in range(4):  # first seen, asked; first seen again, asked again
        _check(stage)
    assert consumer.calls == [] and asked == ["g.passthrough"] * 2

    # Nobody holds it (or the coordinator cannot be asked): first seen, then rejoin.
    def unreachable() -> set[str]:
        raise TransientError("no broker")

    coordinator_says = unreachable
    _check(stage)
    assert consumer.calls == []
    _check(stage)
    assert consumer.calls == ["unsubscribe", f"subscribe {topic}"]
    assert not stage._joined  # ready again only once the new join completes
    # The next wait is longer, so an idle-on-purpose member (more members than partitions) rarely rejoins.
    assert stage._rejoin_after_s == min(shared.runtime.REJOIN_FIRST_S * 2, shared.runtime.REJOIN_MAX_S)


@pytest.mark.kafka
# A static member leaves no group when it unsubscribes: its fresh join must still get the partitions.
@pytest.mark.parametrize("group_instance_id", [None, "passthrough-1"], ids=["dynamic", "static"])
def test_a_stage_started_before_its_topic_existed_ends_up_holding_it(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_instance_id: str | None
) -> None:
    monkeypatch.setattr(shared.runtime, "REJOIN_FIRST_S", 2.0)
    monkeypatch.setattr(shared.runtime, "METADATA_WAIT_S", 1.0)
    settings = isolated_settings(
        kafka_bootstrap, file_store_uri(tmp_path), group_instance_id=group_instance_id
    )
    create_topics(settings, PASSTHROUGH_OUT)
    stage = build_stage(settings=settings)
    with running(stage):
        deadline = time.monotonic() + 60
        while not stage.ready():  # joined, holding nothing: the input topic does not exist yet
            assert time.monotonic() < deadline, "the stage never joined its group"
            time.sleep(0.2)
        assert stage._consumer is not None and stage._consumer.assignment() == set()
        create_topics(settings, SKU_INGESTED)
        input_ids = produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 5)))
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=5, timeout_s=90)
        # What the watchdog asks before a rejoin: the coordinator says this group holds the topic.
        group_id = stage._consumer.config["group_id"]
        assert topics_held_in_group(settings, group_id) == {settings.topic_name(SKU_INGESTED)}
    assert len(outputs) == len(input_ids) == 5


def test_a_stage_waits_for_its_topics_metadata_before_joining_but_not_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Joining before the metadata is what left a member out of its group (shared/runtime.py)."""
    import threading

    stage = build_stage(settings=load_settings(store_uri=file_store_uri(tmp_path)))
    (topic,) = stage.topics
    consumer = _Consumer()
    stage._consumer = consumer

    # The metadata arrives after 0.3 s: the stage waits for it, and not for its timeout. The clock starts
    # before the timer does (started after it, a loaded machine's pause between the two read as a wait
    # under 0.3 s), and the timeout is far beyond any pause of a loaded machine, so only a wait that
    # ignored the metadata reaches it.
    arrives = threading.Timer(0.3, lambda: consumer._cluster.partitions.__setitem__(topic, {0, 1}))
    started = time.monotonic()
    arrives.start()
    stage._await_topic_metadata(timeout_s=60.0)
    waited = time.monotonic() - started
    assert 0.25 <= waited < 30.0
    assert "without partition metadata" not in caplog.text

    # A topic that does not exist: the stage joins anyway after the timeout, and says so.
    consumer._cluster.partitions.clear()
    started = time.monotonic()
    stage._await_topic_metadata(timeout_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert "joining the group without partition metadata" in caplog.text
