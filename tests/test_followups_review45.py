"""Follow-ups of review 45.

A command's "cannot reach Kafka at ..." refusal names the last connection error kafka-python met: its
retry lines show only at ``SKUFORGE_LOG_LEVEL=DEBUG`` now, and a mistyped host or a refused port left
the user the address alone. ``skuforge evaluate --scenes ""`` is refused as its arguments are parsed.
A dead letter that waits before a record that backed its partition off logs its retries once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.flow import PASSTHROUGH
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared.errors import TransientError
from shared.runtime import Context, Emit, Stage
from skuforge_cli.main import main as skuforge_main
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    running,
    sku_ingested_payloads,
)
from tests.support.kafka import session_admin
from tests.support.polling import wait_for

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: every connection is refused (ECONNREFUSED)
NO_SUCH_HOST = "kafka.invalid:9092"  # .invalid never resolves (RFC 6761)


def _kafka_at(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python's clients against ``address``, giving up after 5 s instead of 30 s; the log level
    as a user who set none has it. The refusal names the connection error only if one was logged before
    the deadline (kafka-python starts no connection after it): with 1 s, a loaded machine that stalled
    the first attempt past it read "connection timed out" (tests/test_cli_review45.py met it first)."""
    for client in (KafkaProducer, KafkaAdminClient, KafkaConsumer):
        monkeypatch.setitem(client.DEFAULT_CONFIG, "bootstrap_timeout_ms", 5_000)
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", address)
    monkeypatch.delenv("SKUFORGE_LOG_LEVEL", raising=False)


def test_topics_create_against_a_closed_port_says_the_connection_was_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _kafka_at(CLOSED, monkeypatch)
    assert skuforge_main(["topics", "create"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"skuforge topics create: cannot create the topics: cannot reach Kafka at {CLOSED} "
        f"(connection refused; KafkaTimeoutError: Unable to bootstrap from ['{CLOSED}']); "
        "is it running? (`make kafka-up`, or set SKUFORGE_KAFKA_BOOTSTRAP)"
    ]


def test_topics_create_against_a_host_that_does_not_resolve_names_the_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _kafka_at(NO_SUCH_HOST, monkeypatch)
    assert skuforge_main(["topics", "create"]) == 1
    (refusal,) = capsys.readouterr().err.splitlines()
    # The resolver's own words follow ("Name or service not known", or "Temporary failure in name
    # resolution" where no DNS server answers).
    assert refusal.startswith(
        f"skuforge topics create: cannot create the topics: cannot reach Kafka at {NO_SUCH_HOST} "
        "(DNS lookup failed for kafka.invalid: "
    )
    assert refusal.endswith(
        f"; KafkaTimeoutError: Unable to bootstrap from ['{NO_SUCH_HOST}']); "
        "is it running? (`make kafka-up`, or set SKUFORGE_KAFKA_BOOTSTRAP)"
    )


def test_evaluate_refuses_an_empty_scenes_uri_as_it_parses_its_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--scenes "$SKUFORGE_SCENES_URI"` with the variable unset, as docs/evaluation.md runs it: before,
    # the refusal came only after the backbone loaded and the photos were read (here: a held-out folder
    # that is not there was refused first).
    for empty in ("", "  "):
        with pytest.raises(SystemExit) as exited:
            skuforge_main(
                [
                    "evaluate",
                    "--heldout",
                    str(tmp_path / "no-such-heldout"),
                    "--out",
                    str(tmp_path / "eval"),
                    "--max-synthetic-per-real",
                    "2",
                    "--scenes",
                    empty,
                ]
            )
        assert exited.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            "skuforge evaluate: error: argument --scenes: the URI is empty (is SKUFORGE_SCENES_URI set?); "
            "give the scene library's URI, or leave --scenes out to skip the scene check"
        )


def _raw_send(bootstrap: str, topic_name: str, key: bytes, value: bytes) -> None:
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        raw.send(topic_name, key=key, value=value).get(timeout=30)
    finally:
        raw.close()


def _stage_sample(stage: Stage, name: str, labels: dict[str, str]) -> float:
    return stage.metrics.registry.get_sample_value(name, {"stage": stage.name, **labels}) or 0.0


@pytest.mark.kafka
def test_a_waiting_letter_before_a_record_that_backed_off_logs_its_retries_once(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead letter its DLQ topic refuses even small, in the batch before a record whose handler failed
    transiently: the partition was backing off from that later record already, so the failed send only
    rewound it, and the letter's retries were never marked logged: "dead-lettered" and the producer's
    "stopped for good" came at every retry. Now they come once (then every 10 minutes), as for a letter
    whose own send backs the partition off."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    dlq = settings.dlq_name(SKU_INGESTED)
    below_any_letter = {"max.message.bytes": "300"}
    session_admin(kafka_bootstrap).alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, dlq, configs=below_any_letter)]
    )
    stage = Stage(PASSTHROUGH.name, settings=settings, default_metrics_port=PASSTHROUGH.default_metrics_port)

    @stage.handler(SKU_INGESTED)
    def always_away(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        raise TransientError("the model server is away")

    topic = settings.topic_name(SKU_INGESTED)
    _raw_send(kafka_bootstrap, topic, b"SKU-BAD", b"not json")
    produce(settings, SKU_INGESTED, sku_ingested_payloads(stage.store, 1))  # behind it, in the same batch

    def logged(text: str) -> int:
        return sum(1 for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage())

    def retries() -> float:
        return _stage_sample(stage, "skuforge_messages_total", {"topic": topic, "outcome": "retry"})

    def waiting_refused() -> float:
        return _stage_sample(stage, "skuforge_dlq_refused_total", {"topic": dlq, "outcome": "waiting"})

    lines = ("dead-lettered", "stopped for good")
    with caplog.at_level(logging.WARNING), running(stage):
        wait_for("the refusal counted", waiting_refused, timeout_s=60)
        retried = retries()
        wait_for("the first retry logged", lambda: retries() >= retried + 1, timeout_s=60)
        first = {line: logged(line) for line in lines}
        retried = retries()
        wait_for("three retries more", lambda: retries() >= retried + 3, timeout_s=60)
        assert {line: logged(line) for line in lines} == first  # before, "dead-lettered" at each retry
        assert all(first.values()), first
    assert waiting_refused() == 1
