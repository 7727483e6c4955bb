"""`skuforge dlq list|replay` on the real broker: dead letters by reason, and replay once each."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.envelope import DeadLetter
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage
from shared.config import Settings
from shared.dlq import parse_since
from skuforge_cli.dlq import main as dlq_main
from skuforge_cli.main import main as skuforge
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    running,
    sku_ingested_payloads,
)


def _dlq(capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str) -> tuple[int, str, str]:
    code = dlq_main(list(argv), settings=settings)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sku_ids(records: list[Any]) -> list[str]:
    return sorted(json.loads(record.value)["sku_id"] for record in records)


@pytest.mark.kafka
def test_fix_the_cause_then_replay_once(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing photo dead-letters an event; the photo comes back; replay delivers it, and only once."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    topic, output = settings.topic_name(SKU_INGESTED), settings.topic_name(PASSTHROUGH_OUT)
    stage = build_stage(settings=settings)
    good = sku_ingested_payloads(stage.store, 1, prefix="GOOD")[0]
    missing = sku_ingested_payloads(stage.store, 1, prefix="MISSING")[0]
    photo = missing.photos[0]
    gone = photo.image.model_copy(update={"uri": photo.image.uri.replace("photo.png", "gone.png")})
    missing = missing.model_copy(update={"photos": [photo.model_copy(update={"image": gone})]})
    produce(settings, SKU_INGESTED, [good, missing], raw=[b"not json"])

    with running(stage):
        assert _sku_ids(read_topic(kafka_bootstrap, output, expect=1, timeout_s=60)) == ["GOOD-00000"]
        read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=2, timeout_s=30)

        code, out, _ = _dlq(capsys, settings, "list", topic + ".dlq", "--json")
        assert code == 0
        summary = json.loads(out)
        assert summary["dead_letters"] == 2 and summary["replayed"] == 0
        assert {reason: entry["count"] for reason, entry in summary["reasons"].items()} == {
            "object_missing": 1,
            "not_json": 1,
        }
        sample = summary["reasons"]["object_missing"]["samples"][0]
        assert sample["sku_id"] == "MISSING-00000" and "gone.png" in sample["detail"] and sample["event_id"]

        # The cause is fixed: the photo is back, byte for byte what the event's checksum says.
        stage.store.put_bytes(stage.store.key_for(gone.uri), stage.store.read_verified(photo.image))
        code, out, _ = _dlq(capsys, settings, "replay", topic, "--reason", "object_missing", "--since", "1h")
        assert code == 0
        assert "replayed 1 dead letters" in out and "object_missing: 1" in out and "1 not selected" in out
        assert _sku_ids(read_topic(kafka_bootstrap, output, expect=2, timeout_s=60)) == [
            "GOOD-00000",
            "MISSING-00000",
        ]

        code, out, _ = _dlq(capsys, settings, "replay", topic, "--reason", "object_missing")
        assert code == 0
        assert "replayed 0 dead letters" in out and "skipped 1 already replayed" in out

    # None twice: the input topic holds the two events, the garbage and exactly one replayed copy.
    inputs = read_topic(kafka_bootstrap, topic, expect=4, timeout_s=30)
    assert len(inputs) == 4
    assert _sku_ids(read_topic(kafka_bootstrap, output, expect=2, timeout_s=30)) == [
        "GOOD-00000",
        "MISSING-00000",
    ]
    code, out, _ = _dlq(capsys, settings, "list", topic)
    assert code == 0
    assert "2 dead letters" in out and "(1 replayed)" in out and "object_missing: 1 (1 replayed)" in out
    # --since in the future selects nothing; the not_json letter is still there to replay on purpose.
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    code, out, _ = _dlq(capsys, settings, "replay", topic, "--since", future, "--dry-run")
    assert code == 0 and "would replay 0 dead letters" in out and "2 not selected" in out
    # A bare replay leaves it (its bytes are not JSON, and would be dead-lettered again); --reason asks.
    code, out, _ = _dlq(capsys, settings, "replay", topic, "--dry-run")
    assert code == 0 and "would replay 0 dead letters" in out
    assert "left 1 with a permanent reason (not_json: 1)" in out
    code, out, _ = _dlq(capsys, settings, "replay", topic, "--reason", "not_json", "--dry-run")
    assert code == 0 and "would replay 1 dead letters" in out and "not_json: 1" in out


@pytest.mark.kafka
def test_an_input_too_large_for_a_dead_letter_is_kept_in_the_store_and_replays_whole(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """800 kB of garbage is a valid Kafka record but, base64-encoded in a letter, over the producer's
    1 MiB: the send failed at every retry and the partition stalled behind it."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    stage = build_stage(settings=settings)
    garbage = bytes(range(256)) * (800 * 1024 // 256)
    produce(settings, SKU_INGESTED, [], raw=[garbage])
    produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 1, prefix="AFTER")))

    with running(stage):
        after = read_topic(kafka_bootstrap, settings.topic_name(PASSTHROUGH_OUT), expect=1, timeout_s=60)
        assert _sku_ids(after) == ["AFTER-00000"]  # the stream went on past it
        (record,) = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=30)
        letter = DeadLetter.model_validate_json(record.value)
        assert letter.reason == "not_json" and letter.original_value_b64 == ""
        assert letter.original_value_ref is not None
        assert stage.store.read_verified(letter.original_value_ref) == garbage

        code, out, _ = _dlq(capsys, settings, "replay", topic, "--reason", "not_json")
        assert code == 0 and "replayed 1 dead letters" in out
        inputs = read_topic(kafka_bootstrap, topic, expect=3, timeout_s=30)
        assert [r.value for r in inputs].count(garbage) == 2  # the original and its whole replay


@pytest.mark.kafka
def test_a_topic_that_does_not_exist_is_a_clear_error(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    for action in ("list", "replay"):
        code, out, err = _dlq(capsys, settings, action, "nope.v1")
        assert code == 1 and out == ""
        assert f"skuforge dlq {action}: topic 'nope.v1.dlq' does not exist" in err


def test_help_says_what_each_action_does(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in (
        (["dlq", "--help"], "replay them to their topic"),
        (["dlq", "list", "--help"], "per reason"),
        (["dlq", "replay", "--help"], "replayed once"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            skuforge(argv)
        assert exit_info.value.code == 0
        assert words in " ".join(capsys.readouterr().out.split())


def test_since_takes_an_iso_time_or_a_duration() -> None:
    now = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    assert parse_since("2h", now=now) == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now=now) == datetime(2026, 12, 1, 13, 30, tzinfo=UTC)
    assert parse_since("1d", now=now) == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    assert parse_since("2026-12-01T10:00:00Z") == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert parse_since("2026-12-01T10:00:00") == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)  # naive = UTC
    with pytest.raises(ValueError, match="neither an ISO time"):
        parse_since("yesterday")
    # Before, OverflowError: a traceback from `skuforge dlq replay ... --since 99999999d`.
    with pytest.raises(ValueError, match="before the year 1"):
        parse_since("99999999d", now=now)


@pytest.mark.parametrize(
    "topic", ["", ".dlq", "sku ingested.v1", "sku.ingested.v1\n", "sku.ingested.v1\x1b[2J"]
)
def test_a_topic_that_is_no_kafka_name_is_a_usage_error(
    topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge dlq replay ''` looked up the topic '.dlq' on the broker: exit 1 after a broker round
    trip ("does not exist"), or half a minute later "cannot reach Kafka". It is a usage error, before
    any setting or broker is looked at: exit 2, naming the argument."""
    for action in ("list", "replay"):
        with pytest.raises(SystemExit) as exit_info:
            skuforge(["dlq", action, topic])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"skuforge dlq {action}: error: argument TOPIC: ")
        assert "Traceback" not in err and "\x1b" not in err
