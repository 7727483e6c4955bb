"""`skuforge dlq replay` on the real broker, reviewed again: a dry run whose original topic is gone."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import NewTopic as KafkaNewTopic

from schemas.topics import SKU_INGESTED
from shared.bus import create_topic_names
from shared.config import Settings
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic, record_count
from tests.support.dlq import ingested_letter, small_letters, write_letters
from tests.support.kafka import session_admin

pytestmark = pytest.mark.kafka


def _replay(capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str) -> tuple[int, str, str]:
    code = dlq_main(["replay", settings.topic_name(SKU_INGESTED), *argv], settings=settings)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_dry_run_says_the_original_topic_does_not_exist_as_the_replay_does(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DLQ whose original topic was deleted (or never created here): the dry run said "would replay 2
    dead letters ... to sku.ingested.v1" and exited 0, and the replay it vouched for then failed
    ("does not exist; create it first"). It now says so, and exits 1, as the replay does; once the topic
    is there, both go through."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topic_names(settings, [settings.dlq_name(SKU_INGESTED)], partitions=1)
    small_letters(settings, 2)
    topic = settings.topic_name(SKU_INGESTED)

    for argv in (["--dry-run"], []):
        code, out, err = _replay(capsys, settings, *argv)
        assert code == 1, (argv, out, err)
        assert f"original topic {topic} does not exist; create it first" in err, (argv, err)
        assert "would replay" not in out, out

    create_topics(settings, SKU_INGESTED, partitions=1)
    code, out, _ = _replay(capsys, settings, "--dry-run")
    assert code == 0 and "would replay 2 dead letters" in out, out
    code, out, _ = _replay(capsys, settings)
    assert code == 0 and "replayed 2 dead letters" in out, out
    assert record_count(kafka_bootstrap, topic) == 2


def test_a_record_the_topic_refuses_does_not_keep_the_letters_after_it_from_being_replayed(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One original over the topic's max.message.bytes, first of three: the idempotent producer fails
    every send after a refused one with the same error, so the letters after it were not replayed
    either, at every run. Only it is left now, named; the others are delivered, once."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    topic = settings.topic_name(SKU_INGESTED)
    session_admin(kafka_bootstrap).create_topics(
        [
            KafkaNewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "1000"}),
            KafkaNewTopic(settings.dlq_name(SKU_INGESTED), 1, 1),
        ]
    )
    large = b'{"x": "' + b"y" * 3000 + b'"}'
    write_letters(
        settings,
        ingested_letter(settings, 0, large),
        ingested_letter(settings, 1, b'{"n": 1}'),
        ingested_letter(settings, 2, b'{"n": 2}'),
    )
    code, _, err = _replay(capsys, settings)
    assert code == 1 and "1 of 3 records were not acknowledged" in err, err
    assert "MessageSizeTooLarge" in err, err
    assert sorted(r.value for r in read_topic(kafka_bootstrap, topic, expect=2, timeout_s=30)) == [
        b'{"n": 1}',
        b'{"n": 2}',
    ]
    code, _, err = _replay(capsys, settings)  # again: the refused one alone, the others each once
    assert code == 1 and "1 of 1 records were not acknowledged" in err, err
    assert record_count(kafka_bootstrap, topic) == 2
