"""Two matting replicas share the work, and when one dies mid-stream nothing is lost or decided twice.

Real processes on the real broker: two ``skuforge run matting`` members of one consumer group (static
members ``matting-1`` and ``matting-2``, cooperative-sticky assignment) and one ``skuforge run gate``.
One matting member is killed with SIGKILL while images are still flowing: it commits nothing and
does not leave the group, so its partitions wait for the session timeout, then go to the survivor,
which redoes whatever the dead member had not committed. Every image must then be decided by the
gate exactly once: a redone image is re-produced with the same event_id, and the gate skips it.
On the way, each replica's lag gauge must name only the partitions it holds.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.replicas import Member, count_records, generated_images, group_assignment, wait_until
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED, IMAGE_GENERATED, IMAGE_MATTED
from shared.store import open_store
from tests.support.bus import create_topics, file_store_uri, isolated_settings, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

IMAGES = 40
PARTITIONS = 6
SESSION_TIMEOUT_MS = 10_000


def decisions(
    bootstrap: str, topics: list[str], expect_items: int, timeout_s: float
) -> list[tuple[str, str]]:
    """(item_id, event_id) of every decision record, read until ``expect_items`` items, plus a grace read."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        consumer.assign(
            [TopicPartition(topic, p) for topic in topics for p in consumer.partitions_for_topic(topic) or ()]
        )
        consumer.seek_to_beginning()
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + timeout_s
        grace_until: float | None = None
        while time.monotonic() < deadline and (grace_until is None or time.monotonic() < grace_until):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    envelope = json.loads(record.value)
                    seen.append((envelope["payload"]["matted"]["generated"]["item_id"], envelope["event_id"]))
            if grace_until is None and len({item for item, _ in seen}) >= expect_items:
                grace_until = time.monotonic() + 5.0  # duplicates arriving late are seen too
        return seen
    finally:
        consumer.close()


def lagged_partitions(member: Member) -> set[TopicPartition]:
    """Partitions the member's skuforge_consumer_lag_messages gauge has a sample for."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{member.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return set()
    return {
        TopicPartition(sample.labels["topic"], int(sample.labels["partition"]))
        for family in text_string_to_metric_families(text)
        if family.name == "skuforge_consumer_lag_messages"
        for sample in family.samples
    }


def test_killing_one_of_two_matting_replicas_mid_stream_decides_every_image_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = isolated_settings(
        kafka_bootstrap,
        file_store_uri(tmp_path / "store"),
        max_poll_records=4,  # small batches: the victim dies with work in hand, not a whole backlog
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    create_topics(
        settings, IMAGE_GENERATED, IMAGE_MATTED, GATE_ACCEPTED, CORRECTION_PENDING, partitions=PARTITIONS
    )
    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    payloads = generated_images(store, IMAGES)
    logs = tmp_path / "logs"
    logs.mkdir()
    matting_group = f"{settings.consumer_group_prefix}.matting"
    gate_group = f"{settings.consumer_group_prefix}.gate"
    matting_env = {"SKUFORGE_MATTING_THREADS": "1", "SKUFORGE_MATTING_MAX_BATCH": "2"}

    survivor = Member("matting", settings, logs, instance_id="matting-1", extra_env=matting_env)
    gate = Member("gate", settings, logs, instance_id="gate-1")
    members = [survivor, gate]
    try:
        # The first replica holds everything; the second one's join moves half of it (cooperative).
        wait_until(
            lambda: len(group_assignment(settings, matting_group).get("matting-1", ())) == PARTITIONS,
            120,
            "the first matting replica to hold every partition",
        )
        victim = Member("matting", settings, logs, instance_id="matting-2", extra_env=matting_env)
        members.append(victim)

        def both_replicas_hold_partitions() -> bool:
            held = group_assignment(settings, matting_group)
            return all(held.get(name) for name in ("matting-1", "matting-2")) and (
                sum(len(parts) for parts in held.values()) == PARTITIONS
            )

        wait_until(both_replicas_hold_partitions, 120, "both matting replicas to share the partitions")
        wait_until(
            lambda: len(group_assignment(settings, gate_group).get("gate-1", ())) == PARTITIONS,
            120,
            "the gate to hold its partitions",
        )
        shares = group_assignment(settings, matting_group)
        victim_partitions = shares["matting-2"]
        # Each replica's lag gauge names exactly the partitions it holds now: the first one dropped
        # those it gave away (a stale sample would count their lag twice).
        for member in (survivor, victim):
            wait_until(
                lambda member=member: lagged_partitions(member) == shares[member.instance_id],
                30,
                f"{member.instance_id}'s lag gauge to name its own partitions",
            )

        produce(settings, IMAGE_GENERATED, list(payloads))
        matted_topic = settings.topic_name(IMAGE_MATTED)
        wait_until(lambda: count_records(settings, [matted_topic]) >= 8, 180, "the first matted images")
        victim.kill()
        matted_at_kill = count_records(settings, [matted_topic])
        assert matted_at_kill < IMAGES, "the stream was over before the kill: nothing tested"

        # The dead static member's partitions wait for the session timeout, then go to the survivor.
        wait_until(
            lambda: group_assignment(settings, matting_group).get("matting-1", set()) >= victim_partitions,
            SESSION_TIMEOUT_MS / 1000 + 60,
            "the survivor to take over the dead member's partitions",
        )

        decision_topics = [settings.topic_name(GATE_ACCEPTED), settings.topic_name(CORRECTION_PENDING)]
        seen = decisions(kafka_bootstrap, decision_topics, IMAGES, timeout_s=300)
    except BaseException:
        for member in members:
            print(f"--- {member.instance_id} ---\n{member.log_tail()}")
        raise
    finally:
        for member in members:
            member.stop()

    per_item = Counter(item for item, _ in seen)
    assert set(per_item) == {payload.item_id for payload in payloads}, "some image was never decided"
    decided_twice = {item: count for item, count in per_item.items() if count > 1}
    assert not decided_twice, f"decided more than once: {decided_twice}"
    assert len({event_id for _, event_id in seen}) == IMAGES
    # Nothing was dead-lettered on the way.
    dead = count_records(settings, [settings.dlq_name(IMAGE_GENERATED), settings.dlq_name(IMAGE_MATTED)])
    assert dead == 0
