"""The stage runtime on the real broker: delivery, dead letters, back-off, shutdown, crash recovery."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from schemas.envelope import DeadLetter, Envelope, derive_id
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared.bus import make_envelope
from shared.config import Settings
from shared.runtime import Context, Emit, Stage
from shared.store import open_store
from skuforge_cli.main import main as cli_main
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
    sku_ingested_payloads,
)
from tests.support.polling import wait_for

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[1]


def _event_ids(records: list[Any]) -> list[str]:
    return [json.loads(record.value)["event_id"] for record in records]


def _expected_outputs(settings: Settings, input_ids: list[str]) -> set[str]:
    return {derive_id(event_id, "passthrough", "out") for event_id in input_ids}


def _markers(store_root: Path) -> list[Path]:
    return sorted((store_root / "passthrough").rglob("*.json"))


def test_passthrough_1000_events_each_output_exactly_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), max_poll_records=200)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT)
    stage = build_stage(settings=settings)
    input_ids = produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 1000)))

    with running(stage):
        outputs = read_topic(
            kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1000, timeout_s=120
        )

    output_ids = _event_ids(outputs)
    assert len(output_ids) == 1000, "each input must give exactly one output event"
    assert set(output_ids) == _expected_outputs(settings, input_ids)
    markers = _markers(tmp_path)
    assert len(markers) == 1000
    assert {p.stem for p in markers} == set(output_ids)
    # The output carries the input's payload and lineage.
    first = Envelope[SkuIngested].model_validate_json(outputs[0].value)
    assert first.producer == "passthrough"
    assert first.schema_name == "passthrough.sku.ingested"
    assert first.trace_id in set(input_ids)
    assert record_count(kafka_bootstrap, settings.dlq_name(SKU_INGESTED)) == 0  # the stage has stopped


def test_bad_input_goes_to_dlq_with_reason_and_stream_goes_on(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    stage = build_stage(settings=settings)
    good = sku_ingested_payloads(stage.store, 4, prefix="GOOD")
    # An event whose photo is gone from the store.
    missing = sku_ingested_payloads(stage.store, 1, prefix="MISSING")[0]
    ref = missing.photos[0].image.model_copy(
        update={"uri": missing.photos[0].image.uri.replace("photo.png", "gone.png")}
    )
    missing = missing.model_copy(update={"photos": [missing.photos[0].model_copy(update={"image": ref})]})
    schema_invalid = json.dumps({"event_id": "0" * 32, "schema_name": "sku.ingested", "payload": {}}).encode()
    unsafe_sku = make_envelope(
        SKU_INGESTED, good[0], event_id="1" * 32, sku_id="SKU-1", trace_id="t", producer="test"
    ).model_dump(mode="json")
    unsafe_sku["payload"]["sku"]["sku_id"] = "../../etc"

    produce(settings, SKU_INGESTED, [good[0]], raw=[b"\x00\xffgarbage"])
    produce(settings, SKU_INGESTED, [good[1]], raw=[schema_invalid])
    produce(settings, SKU_INGESTED, [missing, good[2]], raw=[json.dumps(unsafe_sku).encode()])
    produce(settings, SKU_INGESTED, [good[3]])

    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=4, timeout_s=60)
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=4, timeout_s=60)

    assert sorted(json.loads(r.value)["sku_id"] for r in outputs) == [
        "GOOD-00000",
        "GOOD-00001",
        "GOOD-00002",
        "GOOD-00003",
    ]
    dead = [DeadLetter.model_validate_json(r.value) for r in letters]
    reasons = sorted(letter.reason for letter in dead)
    assert reasons == ["not_json", "object_missing", "schema_invalid", "schema_invalid"]
    by_reason = {letter.reason: letter for letter in dead}
    assert base64.b64decode(by_reason["not_json"].original_value_b64) == b"\x00\xffgarbage"
    assert by_reason["object_missing"].sku_id == "MISSING-00000"
    assert "gone.png" in by_reason["object_missing"].detail
    assert all(letter.original_topic == settings.topic_name(SKU_INGESTED) for letter in dead)
    unsafe = next(d for d in dead if b"etc" in base64.b64decode(d.original_value_b64))
    assert "sku_id" in unsafe.detail


def test_transient_store_outage_pauses_and_retries_without_loss(
    kafka_bootstrap: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """The S3 server goes away mid-stream: the stage backs off, then finishes; nothing lost, nothing dead."""
    import boto3

    from tests.support.s3 import restart_s3_server, stop_s3_server

    bucket = f"outage-{os.getpid()}-{int(time.time())}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = isolated_settings(kafka_bootstrap, f"s3://{bucket}/root", s3_endpoint_url=s3_endpoint)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=2)
    stage = build_stage(settings=settings)
    input_ids = produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 60)))

    stop_s3_server()
    try:
        with running(stage):
            # Until the stage has met the outage and backed off. A fixed 3 s sleep here read 0 retries
            # when the stage had not yet joined its group and polled (a loaded machine).
            retries_during_outage = wait_for(
                "the stage to meet the store outage and retry",
                lambda: _metric(stage, "skuforge_retries_total"),
                timeout_s=60,
            )
            restart_s3_server()
            outputs = read_topic(
                kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=60, timeout_s=90
            )
    finally:
        restart_s3_server()

    assert retries_during_outage > 0
    assert set(_event_ids(outputs)) == _expected_outputs(settings, input_ids)
    assert record_count(kafka_bootstrap, settings.dlq_name(SKU_INGESTED)) == 0  # the stage has stopped
    store = open_store(f"s3://{bucket}/root", s3_endpoint_url=s3_endpoint, uri_from="the test")
    assert len(list(store.list_keys("passthrough/"))) == 60


def _metric(stage: Stage, name: str) -> float:
    total = 0.0
    for family in stage.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def test_unexpected_handler_error_is_retried_then_dead_lettered(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = isolated_settings(
        kafka_bootstrap,
        file_store_uri(tmp_path),
        handler_max_attempts=3,
        retry_backoff_initial_s=0.05,
        retry_backoff_max_s=0.1,
    )
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    stage = Stage("flaky", settings=settings)
    calls: dict[str, int] = {}

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        calls[event.sku_id] = calls.get(event.sku_id, 0) + 1
        if event.sku_id == "SKU-00001":
            raise ZeroDivisionError("a bug in the handler")
        if event.sku_id == "SKU-00002" and calls[event.sku_id] < 2:
            raise RuntimeError("fails once, then works")
        return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]

    produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 4)))
    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=3, timeout_s=60)
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=30)

    assert sorted(json.loads(r.value)["sku_id"] for r in outputs) == ["SKU-00000", "SKU-00002", "SKU-00003"]
    assert calls["SKU-00001"] == 3 and calls["SKU-00002"] == 2
    letter = DeadLetter.model_validate_json(letters[0].value)
    assert letter.reason == "handler_error" and letter.error_class == "ZeroDivisionError"
    assert "after 3 attempts" in letter.detail


@pytest.mark.slow
def test_slow_handler_does_not_trigger_rebalances(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Each message takes longer than the session timeout: heartbeats go on, the group never rebalances."""
    settings = isolated_settings(
        kafka_bootstrap, file_store_uri(tmp_path), max_poll_records=1, session_timeout_ms=6_000
    )
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    stage = Stage("slow", settings=settings)

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        time.sleep(7.0)  # > session_timeout_ms
        return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]

    produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 2)))
    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=2, timeout_s=60)
    assert len(outputs) == 2
    assert _metric(stage, "skuforge_rebalances_total") == 0


def test_health_endpoints_and_metrics(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    stage = build_stage(settings=settings)
    produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 3)), raw=[b"nope"])
    with running(stage):
        read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=3, timeout_s=60)
        read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=30)
        assert stage.health is not None
        base = f"http://127.0.0.1:{stage.health.port}"
        deadline = time.monotonic() + 15
        metrics = ""
        while "skuforge_consumer_lag_messages{" not in metrics and time.monotonic() < deadline:
            time.sleep(0.5)
            metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        assert urllib.request.urlopen(base + "/healthz").status == 200
        assert urllib.request.urlopen(base + "/readyz").status == 200
    assert 'skuforge_messages_total{outcome="ok",stage="passthrough"' in metrics
    assert 'skuforge_dlq_total{reason="not_json",stage="passthrough"' in metrics
    assert "skuforge_handler_seconds_bucket" in metrics and 'le="300.0"' in metrics
    assert "skuforge_consumer_lag_messages{" in metrics


def _start_subprocess_stage(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **{f"SKUFORGE_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None},
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.passthrough.stage"],
        cwd=REPO,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_loses_nothing_and_stores_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    store_root = tmp_path / "store"
    settings = isolated_settings(kafka_bootstrap, file_store_uri(store_root), max_poll_records=50)
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT)
    count = 3000
    input_ids = produce(
        settings,
        SKU_INGESTED,
        list(sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), count)),
    )
    output_topic = settings.topic_name(PASSTHROUGH_OUT)

    first = _start_subprocess_stage(settings, tmp_path / "stage.log")
    try:
        seen = read_topic(kafka_bootstrap, output_topic, expect=200, timeout_s=120)
        assert 200 <= len(seen) < count, "the kill must land mid-stream"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    second = _start_subprocess_stage(settings, tmp_path / "stage.log")
    try:
        outputs = read_topic(kafka_bootstrap, output_topic, expect=count, timeout_s=240)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0

    output_ids = _event_ids(outputs)
    # None lost: every input has its output.
    assert set(output_ids) == _expected_outputs(settings, input_ids)
    # Nothing stored twice: one marker object per input, named by the deterministic output id.
    markers = _markers(store_root)
    assert len(markers) == count and {p.stem for p in markers} == set(output_ids)
    # At-least-once: a redelivered batch re-produces the *same* event ids, which consumers de-duplicate.
    assert len(output_ids) >= count


@pytest.mark.slow
def test_sigterm_finishes_commits_and_exits_zero(kafka_bootstrap: str, tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    settings = isolated_settings(kafka_bootstrap, file_store_uri(store_root))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    input_ids = produce(
        settings,
        SKU_INGESTED,
        list(sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 50)),
    )
    output_topic = settings.topic_name(PASSTHROUGH_OUT)

    stage = _start_subprocess_stage(settings, tmp_path / "stage.log")
    read_topic(kafka_bootstrap, output_topic, expect=50, timeout_s=120)
    stage.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=60) == 0

    # Offsets were committed: a restarted stage has nothing to redo.
    again = _start_subprocess_stage(settings, tmp_path / "stage.log")
    time.sleep(8)
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=60) == 0
    outputs = read_topic(kafka_bootstrap, output_topic, expect=50, timeout_s=30)
    assert sorted(_event_ids(outputs)) == sorted(_expected_outputs(settings, input_ids))


def _raw_event(settings: Settings, prefix: str, event_id: str) -> dict[str, Any]:
    """A valid sku.ingested envelope as JSON data, to be changed the way another producer would."""
    payload = sku_ingested_payloads(
        open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 1, prefix=prefix
    )[0]
    sku_id = payload.sku.sku_id
    envelope = make_envelope(
        SKU_INGESTED, payload, event_id=event_id, sku_id=sku_id, trace_id="t", producer="test"
    )
    return envelope.model_dump(mode="json")


def test_consumer_handles_an_event_with_fields_it_does_not_know(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A producer one compatible change ahead adds fields; a stage not yet upgraded handles the event."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    newer = _raw_event(settings, "NEWER", "2" * 32)
    newer["priority"] = "high"  # in the envelope
    newer["payload"]["lighting"] = "studio"  # in the payload
    newer["payload"]["photos"][0]["image"]["exif"] = {"iso": 100}  # deep inside it
    produce(settings, SKU_INGESTED, [], raw=[json.dumps(newer).encode()])

    with running(build_stage(settings=settings)):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=60)

    assert [json.loads(r.value)["sku_id"] for r in outputs] == ["NEWER-00000"]
    assert record_count(kafka_bootstrap, settings.dlq_name(SKU_INGESTED)) == 0  # the stage has stopped
    # The stage writes what its own contract says: the strict model (as producers use it) accepts the output.
    Envelope[SkuIngested].model_validate_json(outputs[0].value)
    assert b"lighting" not in outputs[0].value and b"priority" not in outputs[0].value


def test_newer_schema_version_on_a_v1_topic_is_dead_lettered_as_unsupported(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A v2 event on a v1 topic is refused with a reason that says so, whether or not its payload parses."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    same_shape = _raw_event(settings, "V2SAME", "3" * 32)
    same_shape["schema_version"] = 2
    retyped = _raw_event(settings, "V2RETYPED", "4" * 32)
    retyped["schema_version"] = 2
    retyped["payload"]["photos"] = {"front": retyped["payload"]["photos"][0]}  # a breaking change
    current = _raw_event(settings, "V1", "5" * 32)
    produce(settings, SKU_INGESTED, [], raw=[json.dumps(e).encode() for e in (same_shape, retyped, current)])

    with running(build_stage(settings=settings)):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=60)
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=2, timeout_s=30)

    assert [json.loads(r.value)["sku_id"] for r in outputs] == ["V1-00000"]
    dead = sorted((DeadLetter.model_validate_json(r.value) for r in letters), key=lambda d: d.sku_id or "")
    assert [d.reason for d in dead] == ["schema_version_unsupported"] * 2
    assert [d.sku_id for d in dead] == ["V2RETYPED-00000", "V2SAME-00000"]
    assert [d.event_id for d in dead] == ["4" * 32, "3" * 32]
    assert all("v2" in d.detail and "sku.ingested.v2" in d.detail for d in dead)


def test_a_session_timeout_the_broker_refuses_is_one_line_naming_the_setting(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over the broker's group.max.session.timeout.ms (30 min by default) the join is refused: before,
    `skuforge run` ended in kafka-python's InvalidSessionTimeoutError traceback, at every restart."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    environment = {
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TOPIC_NAMESPACE": settings.topic_namespace,
        "CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "STORE_URI": settings.store_uri,
        "METRICS_PORT": "0",
        "GROUP_LAG_INTERVAL_S": "0",
        "SESSION_TIMEOUT_MS": "3600000",
    }
    for name, value in environment.items():
        monkeypatch.setenv(f"SKUFORGE_{name}", value)
    assert cli_main(["run", "passthrough"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("skuforge run: the Kafka broker refused SKUFORGE_SESSION_TIMEOUT_MS=3600000"), last
    assert "group.max.session.timeout.ms" in last


def test_a_dead_letter_with_no_dlq_topic_waits_while_the_other_partitions_go_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The DLQ topic is missing: the bad record's partition waits (nothing lost, no spin), the other
    partition's events are forwarded once each, and the letter is written once the topic exists."""
    from kafka import KafkaProducer

    from shared.bus import ensure_topics

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=2.0)
    ensure_topics(settings, [SKU_INGESTED], partitions=2, with_dlq=False)
    create_topics(settings, PASSTHROUGH_OUT, partitions=1)
    stage = build_stage(settings=settings)
    good = [
        make_envelope(
            SKU_INGESTED,
            payload,
            event_id=f"{n + 1:032x}",
            sku_id=payload.sku.sku_id,
            trace_id="t",
            producer="test",
        )
        for n, payload in enumerate(sku_ingested_payloads(stage.store, 3))
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    topic = settings.topic_name(SKU_INGESTED)
    producer.send(topic, key=b"BAD", value=b"\x00\xffgarbage", partition=0)
    for envelope in good:
        producer.send(
            topic, key=envelope.sku_id.encode(), value=envelope.model_dump_json().encode(), partition=1
        )
    producer.flush()
    producer.close()

    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=3, timeout_s=60)
        ensure_topics(settings, [SKU_INGESTED], partitions=2)  # the operator creates the DLQ topic
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=60)

    assert sorted(_event_ids(outputs)) == sorted(_expected_outputs(settings, [e.event_id for e in good]))
    [letter] = [DeadLetter.model_validate_json(record.value) for record in letters]
    assert letter.reason == "not_json" and (letter.original_partition, letter.original_offset) == (0, 0)
    assert base64.b64decode(letter.original_value_b64) == b"\x00\xffgarbage"


def test_a_stage_that_returned_leaves_the_signal_handlers_as_they_were(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """run() installed its SIGTERM and SIGINT handlers and left them: a later SIGTERM in the process
    only asked the finished stage to stop, and was lost (a `dlq replay` run after it in the same process
    found SIGTERM handled, kept that handler, and was not stopped by it)."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    stage = build_stage(settings=settings)
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    stage.stop()  # before it starts: it joins, finds itself stopped, and returns
    assert stage.run() == 0
    assert {signum: signal.getsignal(signum) for signum in before} == before
