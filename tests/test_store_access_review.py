"""An S3 store that refuses the deployment (missing bucket, no credentials) on a real moto server.

Such a refusal is the deployment's fault, not the input's: the runtime must pause and retry, so a
credential blip or a bucket created late never dead-letters good input.
"""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest

from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared.errors import StoreMisconfigured
from shared.observability import StageMetrics
from shared.runtime import Stage
from shared.store import open_store
from tests.support.bus import (
    create_topics,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
    sku_ingested_payloads,
)


def _failed_writes(metrics: StageMetrics) -> float:
    value = metrics.registry.get_sample_value("skuforge_store_write_failures_total", {"stage": "review"})
    return value or 0.0


def _retries(stage: Stage, error: str | None = None) -> float:
    """The stage's retries after transient faults, of one error class or of all."""
    return sum(
        sample.value
        for family in stage.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "skuforge_retries_total" and error in (None, sample.labels["error"])
    )


def _dead_lettered(stage: Stage) -> float:
    value = stage.metrics.registry.get_sample_value(
        "skuforge_messages_total",
        {"stage": stage.name, "topic": stage.settings.topic_name(SKU_INGESTED), "outcome": "dlq"},
    )
    return value or 0.0


def test_a_missing_bucket_is_a_deployment_fault_and_its_writes_are_counted(s3_endpoint: str) -> None:
    store = open_store(
        f"s3://absent-{uuid.uuid4().hex[:20]}/pfx", s3_endpoint_url=s3_endpoint, uri_from="the test"
    )
    metrics = StageMetrics("review")
    store.on_write = metrics.observe_store_write

    with pytest.raises(StoreMisconfigured, match=r"NoSuchBucket.*check the credentials"):
        store.get_bytes("a.bin")
    with pytest.raises(StoreMisconfigured, match="NoSuchBucket"):
        store.put_bytes("a.bin", b"x")
    with pytest.raises(StoreMisconfigured, match="NoSuchBucket"):
        list(store.list_keys())
    assert _failed_writes(metrics) == 1


def test_no_credentials_at_all_is_a_deployment_fault(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to fall back on
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it found before
    store = open_store(
        f"s3://bucket-{uuid.uuid4().hex[:12]}/pfx", s3_endpoint_url=s3_endpoint, uri_from="the test"
    )

    with pytest.raises(StoreMisconfigured, match=r"no usable S3 credentials.*check the credentials"):
        store.get_bytes("a.bin")
    with pytest.raises(StoreMisconfigured):
        store.put_bytes("a.bin", b"x")


@pytest.mark.kafka
def test_a_bucket_that_is_away_pauses_the_stage_and_dead_letters_nothing(
    kafka_bootstrap: str, s3_endpoint: str
) -> None:
    """The bucket is gone while events wait (deleted, or a wrong name fixed by a redeploy): the stage
    retries past its handler_max_attempts without dead-lettering, then finishes once it is back."""
    bucket = f"away-{uuid.uuid4().hex[:20]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    settings = isolated_settings(
        kafka_bootstrap,
        f"s3://{bucket}/root",
        s3_endpoint_url=s3_endpoint,
        handler_max_attempts=2,
        retry_backoff_initial_s=0.05,
        retry_backoff_max_s=0.2,
    )
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    stage = build_stage(settings=settings)
    input_ids = produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 5)))
    photo_key = "root/fixtures/photo.png"
    photo = client.get_object(Bucket=bucket, Key=photo_key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=photo_key)
    client.delete_bucket(Bucket=bucket)

    with running(stage):
        deadline = time.monotonic() + 60
        # Well past its handler_max_attempts, unless it gave up and dead-lettered (checked below).
        while _retries(stage) < 3 * settings.handler_max_attempts and not _dead_lettered(stage):
            assert time.monotonic() < deadline, "the stage never met the missing bucket"
            time.sleep(0.1)
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=photo_key, Body=photo)
        outputs = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=5, timeout_s=60)

    # The stage has stopped: a letter it wrote is in the topic, so reading as many as there are reads it.
    dlq = settings.dlq_name(SKU_INGESTED)
    letters = read_topic(kafka_bootstrap, dlq, expect=record_count(kafka_bootstrap, dlq), timeout_s=30)
    assert [json.loads(letter.value)["reason"] for letter in letters] == []
    assert len(outputs) == 5 and len(input_ids) == 5
    assert _retries(stage, "StoreMisconfigured") >= 3 * settings.handler_max_attempts
