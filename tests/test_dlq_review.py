"""`skuforge dlq` on letters and stores it did not expect: a clear error and exit 1, never a traceback."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from devstack.broker import free_port
from schemas.topics import SKU_INGESTED
from shared.config import Settings
from shared.store import open_store
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic


def _letter(settings: Settings, **fields: Any) -> dict[str, Any]:
    letter: dict[str, Any] = {
        "reason": "object_missing",
        "detail": "photo gone",
        "error_class": "BadInput",
        "stage": "passthrough",
        "original_topic": settings.topic_name(SKU_INGESTED),
        "original_partition": 0,
        "original_offset": 0,
        "original_value_b64": base64.b64encode(b'{"x": 1}').decode(),
        "failed_at": datetime.now(UTC).isoformat(),
    }
    letter.update(fields)
    return letter


def _write_letters(settings: Settings, *letters: dict[str, Any]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for letter in letters:
        producer.send(settings.dlq_name(SKU_INGESTED), json.dumps(letter).encode())
    producer.flush()
    producer.close()


@pytest.mark.kafka
def test_letters_with_a_naive_failed_at_are_selected_by_since(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contract takes a time without an offset (another writer's letter); --since compared it with
    an aware time and the command died with a TypeError traceback."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    now = datetime.now(UTC).replace(tzinfo=None)
    _write_letters(
        settings,
        _letter(settings, failed_at=now.isoformat()),
        _letter(settings, failed_at=(now - timedelta(days=3)).isoformat()),
    )
    code = dlq_main(["list", settings.topic_name(SKU_INGESTED), "--since", "2h", "--json"], settings=settings)
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    assert summary["dead_letters"] == 1  # naive = UTC: the recent one only
    assert summary["reasons"]["object_missing"]["samples"][0]["failed_at"].endswith("+00:00")


@pytest.mark.kafka
def test_a_letter_whose_original_is_not_base64_is_a_clear_error(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    _write_letters(settings, _letter(settings, original_value_b64="not*base64!"))
    code = dlq_main(["replay", settings.topic_name(SKU_INGESTED)], settings=settings)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "skuforge dlq replay: cannot replay" in captured.err and "not valid base64" in captured.err


@pytest.mark.kafka
def test_replay_markers_the_store_refuses_are_a_clear_error_that_says_what_was_sent(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sends were acknowledged, then the marker write failed: the operator must learn that the
    letters went out unmarked (a second replay sends them again), not read a traceback."""
    not_a_folder = tmp_path / "store"
    not_a_folder.write_bytes(b"")  # every marker write under it fails
    settings = isolated_settings(kafka_bootstrap, file_store_uri(not_a_folder))
    create_topics(settings, SKU_INGESTED, partitions=1)
    _write_letters(settings, _letter(settings))
    code = dlq_main(
        ["replay", settings.topic_name(SKU_INGESTED)], settings=settings, store=open_store(settings.store_uri)
    )
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert (
        "republished 1 dead letters" in captured.err
        and "could not write their replay markers" in captured.err
    )
    assert [r.value for r in read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=1)] == [
        b'{"x": 1}'
    ]


@pytest.mark.kafka
def test_an_unreachable_store_is_a_clear_error(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    _write_letters(settings, _letter(settings))
    nobody = f"http://127.0.0.1:{free_port()}"
    store = open_store("s3://skuforge/dlq", s3_endpoint_url=nobody)
    code = dlq_main(["list", settings.topic_name(SKU_INGESTED)], settings=settings, store=store)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith("skuforge dlq list: S3 unreachable")
