"""`skuforge topics create` against topics that already exist: below the settings is an error, never
a silent success, and `--grow` adds the partitions the settings ask for."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from schemas.topics import ALL_TOPICS, PASSTHROUGH_OUT, SKU_INGESTED
from shared.config import load_settings
from shared.errors import TransientError
from skuforge_cli.main import main as cli_main
from tests.support.kafka import session_admin


def _namespace(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str) -> str:
    namespace = f"tp{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SKUFORGE_TOPIC_NAMESPACE", namespace)
    return namespace


def _partitions(kafka_bootstrap: str) -> dict[str, int]:
    """Partition count of each flow topic (and .dlq) of the current namespace."""
    settings = load_settings()
    names = [
        n for t in (*ALL_TOPICS, PASSTHROUGH_OUT) for n in (settings.topic_name(t), settings.dlq_name(t))
    ]
    return {t["name"]: len(t["partitions"]) for t in session_admin(kafka_bootstrap).describe_topics(names)}


def _delete_namespace(kafka_bootstrap: str, namespace: str) -> None:
    admin = session_admin(kafka_bootstrap)
    with contextlib.suppress(Exception):
        mine = [name for name in admin.list_topics() if name.startswith(namespace)]
        admin.delete_topics(mine, timeout_ms=10_000, raise_errors=False)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(["topics", "create", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.kafka
def test_topics_with_fewer_partitions_than_asked_are_an_error_until_grown(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SKUFORGE_TOPIC_PARTITIONS raised 6 -> 12 (the chart's topicPartitions, with maxReplicas 12)
    reported success while the topics kept 6 partitions: half the autoscaled members sat idle."""
    namespace = _namespace(monkeypatch, kafka_bootstrap)
    try:
        monkeypatch.setenv("SKUFORGE_TOPIC_PARTITIONS", "2")
        code, out, _ = _run(capsys)
        assert code == 0 and len(json.loads(out)["created"]) == 2 * (len(ALL_TOPICS) + 1)
        topic = f"{namespace}{SKU_INGESTED.name}"

        monkeypatch.setenv("SKUFORGE_TOPIC_PARTITIONS", "4")
        code, out, err = _run(capsys)
        assert code == 3, "2 partitions where 4 are asked: not a success, and not Kafka away (1)"
        assert json.loads(out) == {"created": [], "grown": {}}
        assert len(err.splitlines()) == 1 and err.startswith("skuforge topics create: ")
        assert f"{topic} (2 partitions, asked 4)" in err and "--grow" in err
        assert ".dlq (" not in err  # a DLQ has one partition on purpose
        assert _partitions(kafka_bootstrap)[topic] == 2  # nothing changed without --grow

        code, out, err = _run(capsys, "--grow")
        assert code == 0
        assert json.loads(out)["grown"][topic] == [2, 4]
        assert "warning: added partitions" in err and "keyed placement of SKUs changed" in err
        counts = _partitions(kafka_bootstrap)
        assert {name: n for name, n in counts.items() if not name.endswith(".dlq")} == {
            name: 4 for name in counts if not name.endswith(".dlq")
        }
        assert {n for name, n in counts.items() if name.endswith(".dlq")} == {1}

        assert _run(capsys) == (0, json.dumps({"created": [], "grown": {}}) + "\n", "")
    finally:
        _delete_namespace(kafka_bootstrap, namespace)


@pytest.mark.kafka
def test_a_replication_below_the_settings_is_an_error_grow_cannot_fix(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = _namespace(monkeypatch, kafka_bootstrap)
    try:
        assert _run(capsys, "--partitions", "1")[0] == 0
        monkeypatch.setenv("SKUFORGE_TOPIC_REPLICATION", "2")  # what production asks (one broker here)
        for grow in ([], ["--grow"]):  # --grow adds partitions only
            code, _, err = _run(capsys, "--partitions", "1", *grow)
            assert code == 3, "topics with 1 replica where 2 are asked must not be a success"
            assert len(err.splitlines()) == 1
            assert f"{namespace}{SKU_INGESTED.name} (replication 1, asked 2)" in err
            assert "replication cannot be raised by this command" in err and "--grow" not in err
    finally:
        _delete_namespace(kafka_bootstrap, namespace)


@pytest.mark.kafka
def test_topics_whose_metadata_never_shows_are_one_line_not_a_traceback(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = _namespace(monkeypatch, kafka_bootstrap)

    def never_visible(admin: object, names: list[str], timeout_s: float) -> None:
        if names:
            raise TransientError(f"topics not visible after {timeout_s}s: {sorted(names)[:1]}")

    monkeypatch.setattr("shared.bus._wait_for_metadata", never_visible)
    try:
        code, _, err = _run(capsys)
        assert code == 1
        assert err.startswith("skuforge topics create: topics not visible after 30.0s")
        assert len(err.splitlines()) == 1
    finally:
        _delete_namespace(kafka_bootstrap, namespace)


@pytest.mark.kafka
def test_a_replication_above_the_brokers_there_are_is_refused_for_good_not_kafka_away(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, every KafkaError exited 1 "cannot reach Kafka ... is it running?": the topics Job retried
    # a request the broker refuses for good (one broker here, replication 2 asked) six times.
    namespace = _namespace(monkeypatch, kafka_bootstrap)
    monkeypatch.setenv("SKUFORGE_TOPIC_REPLICATION", "2")
    try:
        code, _, err = _run(capsys, "--partitions", "1")
        assert code == 3
        assert err.startswith("skuforge topics create: Kafka refused to create the topics: ")
        assert "InvalidReplicationFactor" in err and "cannot reach" not in err
    finally:
        _delete_namespace(kafka_bootstrap, namespace)


def test_which_kafka_errors_running_again_may_fix() -> None:
    from kafka.errors import (
        BrokerNotAvailableError,
        InvalidPartitionsError,
        InvalidReplicationFactorError,
        KafkaTimeoutError,
        NotControllerError,
        ReassignmentInProgressError,
        TopicAuthorizationFailedError,
    )

    from shared.bus import retriable_kafka_error

    for again in (
        BrokerNotAvailableError(),
        KafkaTimeoutError(),
        NotControllerError(),
        ReassignmentInProgressError(),
    ):
        assert retriable_kafka_error(again), type(again).__name__
    for never in (InvalidReplicationFactorError(), InvalidPartitionsError(), TopicAuthorizationFailedError()):
        assert not retriable_kafka_error(never), type(never).__name__


@pytest.mark.kafka
def test_a_min_insync_replicas_below_what_create_sets_is_named(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With 3 replicas asked, `topics create` sets min.insync.replicas=2 on the topics it creates (acks=all
    then needs two brokers to hold a record). An existing topic left at the cluster's default of 1 was
    accepted unseen: the one broker that acknowledged a record could be lost with it. It is now named
    with the value, beside the replication, and how to set it; one that has it is not."""
    namespace = _namespace(monkeypatch, kafka_bootstrap)
    try:
        assert _run(capsys, "--partitions", "1")[0] == 0
        kept = f"{namespace}{SKU_INGESTED.name}"
        session_admin(kafka_bootstrap).alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, kept, configs={"min.insync.replicas": "2"})]
        )
        monkeypatch.setenv("SKUFORGE_TOPIC_REPLICATION", "3")  # what production asks (one broker here)
        code, _, err = _run(capsys, "--partitions", "1")
        assert code == 3 and len(err.splitlines()) == 1, err
        other = f"{namespace}{PASSTHROUGH_OUT.name}"
        assert f"{other} (replication 1, asked 3; min.insync.replicas 1, asked 2)" in err, err
        assert f"{kept} (replication 1, asked 3)" in err, err
        assert "kafka-configs.sh" in err and "min.insync.replicas=2" in err, err
    finally:
        _delete_namespace(kafka_bootstrap, namespace)
