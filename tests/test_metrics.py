"""The metrics ops read: group lag from the broker, store writes, the console's oldest task, model calls."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from schemas.flow import CONSOLE_INTAKE, GATE, MATTING
from services.console.metrics import ConsoleMetrics
from services.console.tasks import TaskStore
from shared.config import Settings
from shared.errors import BadInput
from shared.group_lag import lag_by_topic, watched_groups
from shared.observability import StageMetrics
from shared.store import FileStore
from tests.support.console import flagged_item, pending_envelope
from tests.support.group_lag import lag_watcher, left_group
from tests.support.kafka import NewTopic


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    value = registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_group_lag_sums_uncommitted_messages_over_every_partition() -> None:
    ends = {TopicPartition("a", 0): 10, TopicPartition("a", 1): 5, TopicPartition("b", 0): 7}
    committed: dict[TopicPartition, int | None] = {TopicPartition("a", 0): 4, TopicPartition("b", 0): 7}
    # a/1 was never committed: all 5 of its messages are behind.
    assert lag_by_topic(committed, ends) == {"a": 6 + 5, "b": 0}


def test_a_stage_watches_its_own_group_and_the_groups_that_consume_what_it_produces() -> None:
    settings = Settings()
    watched = watched_groups(
        MATTING.name,
        [settings.topic_name(topic) for topic in MATTING.consumes],
        lambda stage: f"skuforge.{stage}",
        settings.topic_name,
    )
    # Matting reports the gate's lag on image.matted, so a stopped gate's lag is still reported.
    assert watched == {"skuforge.matting": {"image.generated.v1"}, "skuforge.gate": {"image.matted.v1"}}
    gate = watched_groups(GATE.name, ["image.matted.v1"], lambda stage: f"p.{stage}", settings.topic_name)
    assert gate["p.trainstore"] == {"gate.accepted.v1", "correction.pending.v1"}
    assert gate["p.console-intake"] == {"correction.pending.v1", "gate.accepted.v1"}
    # The console publishes its decisions from the process that serves its intake's /metrics: a stopped
    # trainstore's lag on correction.resolved was reported by no one.
    console = watched_groups(CONSOLE_INTAKE.name, ["p"], lambda stage: f"p.{stage}", settings.topic_name)
    assert console["p.trainstore"] == {"correction.resolved.v1"}
    # A stage that is not in the flow watches only its own group.
    assert watched_groups("adhoc", ["t"], lambda stage: stage, settings.topic_name) == {"adhoc": {"t"}}


@pytest.mark.kafka
def test_group_lag_is_read_from_the_broker_for_a_group_with_no_running_member(
    kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    topic = new_topic("lag", partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for index in range(9):
        producer.send(topic, value=b"x", partition=index % 2)
    producer.flush()
    producer.close()
    group = f"lag-group-{topic}"
    left_group(kafka_bootstrap, group, topic, 3)  # 5 on p0, 4 on p1

    metrics = StageMetrics("someone-upstream")
    watcher = lag_watcher(kafka_bootstrap, group, topic, metrics)
    try:
        assert watcher.read_once() == {group: {topic: (5 - 3) + 4}}
        assert sample(metrics.registry, "skuforge_consumer_group_lag_messages", group=group, topic=topic) == 6
    finally:
        watcher.stop()


def test_store_writes_are_timed_and_failures_counted(tmp_path: Path) -> None:
    metrics = StageMetrics("trainstore")
    store = FileStore(tmp_path / "store")
    store.on_write = metrics.observe_store_write
    store.put_bytes("a/b.bin", b"12345")
    assert sample(metrics.registry, "skuforge_store_write_seconds_count", stage="trainstore") == 1
    assert sample(metrics.registry, "skuforge_store_write_failures_total", stage="trainstore") == 0
    (tmp_path / "store" / "a" / "b.bin").unlink()
    (tmp_path / "store" / "a" / "b.bin").mkdir()  # a directory where the object must go
    with pytest.raises(BadInput, match="key_conflict"):
        store.put_bytes("a/b.bin", b"again")
    assert sample(metrics.registry, "skuforge_store_write_failures_total", stage="trainstore") == 1
    assert sample(metrics.registry, "skuforge_store_write_seconds_count", stage="trainstore") == 1


def test_model_calls_record_latency_and_batch_size() -> None:
    metrics = StageMetrics("matting")
    with metrics.model_call("matting", 6):
        pass
    assert sample(metrics.registry, "skuforge_model_batch_size_sum", stage="matting", model="matting") == 6
    assert sample(metrics.registry, "skuforge_model_seconds_count", stage="matting", model="matting") == 1


def test_a_model_call_that_raised_is_counted_as_a_call() -> None:
    # SkuforgeTritonRefusing divides the generator's refusals by its calls: a refused call must be one.
    metrics = StageMetrics("generator")
    model = "skuforge_generator_composite"
    with pytest.raises(TimeoutError), metrics.model_call(model, 1):
        raise TimeoutError("Triton did not answer")
    assert sample(metrics.registry, "skuforge_model_seconds_count", stage="generator", model=model) == 1


def test_console_reports_the_age_of_its_oldest_waiting_task(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    now = [1_000.0]
    tasks = TaskStore(tmp_path / "tasks.sqlite3", clock=lambda: now[0])
    metrics = ConsoleMetrics(tasks)
    assert sample(metrics.registry, "skuforge_console_oldest_task_age_seconds") == 0
    tasks.add_pending(pending_envelope(flagged_item(store, 0)))
    now[0] += 50
    tasks.add_pending(pending_envelope(flagged_item(store, 1)))
    now[0] += 70
    assert sample(metrics.registry, "skuforge_console_oldest_task_age_seconds") == 120
    assert b"skuforge_console_tasks" in generate_latest(metrics.registry)
