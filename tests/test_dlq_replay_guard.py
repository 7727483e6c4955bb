"""`skuforge dlq replay` sends a letter only where it came from, and by default only one a fix can help.

Two gaps of the last review: a letter in this environment's DLQ that names another topic as its
original (a mirrored or shared DLQ) was republished to that other topic; and a bare replay after an
outage re-sent every corrupt input too, which only dead-lettered again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.events import dead_letter
from schemas.topics import SKU_INGESTED
from shared.config import Settings
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic, record_count
from tests.support.dlq import write_letters


def _letter(original_topic: str, value: bytes, reason: str = "object_missing") -> dict[str, Any]:
    """A dead letter as a stage writes it, of ``value`` read from ``original_topic``."""
    return dead_letter(original_topic, 0, value, reason=reason, detail=f"{reason} (test)")


def _replay(capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str) -> tuple[int, str, str]:
    code = dlq_main(["replay", settings.topic_name(SKU_INGESTED), *argv], settings=settings)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _values(bootstrap: str, topic: str, expect: int) -> list[bytes]:
    # Waiting for records returns once they are read, so only a loaded machine waits long. That none
    # came is record_count's: a read for none waits its whole time and may miss a late record.
    return sorted(record.value for record in read_topic(bootstrap, topic, expect=expect, timeout_s=30))


@pytest.mark.kafka
def test_a_letter_whose_original_is_another_topic_is_never_replayed_there(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """This environment's DLQ holds a letter of another environment's topic (a mirrored DLQ): the
    replay republished it into that other environment's topic and said it went to ours."""
    mine = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "mine"))
    other = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "other"))
    create_topics(mine, SKU_INGESTED, partitions=1)
    create_topics(other, SKU_INGESTED, partitions=1)
    my_topic, other_topic = mine.topic_name(SKU_INGESTED), other.topic_name(SKU_INGESTED)
    write_letters(mine, _letter(my_topic, b'{"own": 1}'), _letter(other_topic, b'{"foreign": 1}'))

    code, out, err = _replay(capsys, mine)
    # The replay has ended: what it sent is in the topic, so its count is exact.
    assert record_count(kafka_bootstrap, other_topic) == 0, "replayed into another environment"
    assert _values(kafka_bootstrap, my_topic, expect=1) == [b'{"own": 1}']
    assert code == 1, "a letter left for its topic must not look like a clean replay"
    assert f"replayed 1 dead letters from {my_topic}.dlq to {my_topic}" in out
    assert "1 of another topic" in out
    assert err.startswith("skuforge dlq replay: 1 dead letter")
    assert f"{other_topic} (1)" in err and "--since" in err

    # Again: the own letter is done, the foreign one is still refused, and a dry run says so too.
    code, out, err = _replay(capsys, mine, "--dry-run")
    assert code == 1 and "would replay 0 dead letters" in out and "1 already replayed" in out
    assert other_topic in err
    # Left out on purpose (here: all of them, by time), the run is clean.
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    code, out, err = _replay(capsys, mine, "--since", future)
    assert code == 0 and err == "" and "replayed 0 dead letters" in out
    assert record_count(kafka_bootstrap, other_topic) == 0


@pytest.mark.kafka
def test_a_bare_replay_leaves_permanent_faults_and_says_how_to_replay_them(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an outage, `dlq replay TOPIC` re-sent every corrupt input too, each dead-lettered again."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    write_letters(
        settings,
        _letter(topic, b'{"photo": "back"}', "object_missing"),
        _letter(topic, b'{"stage": "fixed"}', "handler_error"),
        _letter(topic, b"not json", "not_json"),
        _letter(topic, b'{"photo": "altered"}', "checksum_mismatch"),
        _letter(topic, b'{"photo": "corrupt"}', "corrupt"),
    )

    code, out, err = _replay(capsys, settings, "--dry-run")
    assert code == 0 and err == ""
    assert "would replay 2 dead letters" in out and "handler_error: 1, object_missing: 1" in out
    assert record_count(kafka_bootstrap, topic) == 0  # a dry run sends nothing

    code, out, err = _replay(capsys, settings)
    assert code == 0 and err == ""
    assert _values(kafka_bootstrap, topic, expect=2) == [b'{"photo": "back"}', b'{"stage": "fixed"}']
    assert "replayed 2 dead letters" in out
    assert "left 3 with a permanent reason (checksum_mismatch: 1, corrupt: 1, not_json: 1)" in out
    assert "--reason REASON" in out and "--include-permanent" in out

    # On purpose: one reason by name, then the rest with the flag; each still once.
    code, out, _ = _replay(capsys, settings, "--reason", "not_json")
    assert code == 0 and "replayed 1 dead letters" in out and "permanent" not in out
    code, out, _ = _replay(capsys, settings, "--include-permanent")
    assert code == 0 and "replayed 2 dead letters" in out and "checksum_mismatch: 1, corrupt: 1" in out
    code, out, _ = _replay(capsys, settings)
    assert code == 0 and "replayed 0 dead letters" in out and "5 already replayed" in out
    assert "permanent" not in out
    assert len(_values(kafka_bootstrap, topic, expect=5)) == 5
    # `dlq list` says which reasons a bare replay leaves.
    code, summary, _ = _dlq_list(capsys, settings)
    assert code == 0
    assert {reason: entry["permanent"] for reason, entry in summary["reasons"].items()} == {
        "object_missing": False,
        "handler_error": False,
        "not_json": True,
        "checksum_mismatch": True,
        "corrupt": True,
    }


def _dlq_list(capsys: pytest.CaptureFixture[str], settings: Settings) -> tuple[int, dict[str, Any], str]:
    code = dlq_main(["list", settings.topic_name(SKU_INGESTED), "--json"], settings=settings)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err
