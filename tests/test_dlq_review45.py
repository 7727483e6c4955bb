"""`skuforge dlq replay` and the DLQ reader on the real broker: an unexpected error part-way through a
replay."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import shared.dlq as dlq
from schemas.envelope import DeadLetter
from schemas.topics import SKU_INGESTED
from shared.dlq import DlqError, read_dead_letters, replay
from shared.store import FileStore
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic, record_count
from tests.support.dlq import small_letters

pytestmark = pytest.mark.kafka


def test_an_unexpected_error_part_way_through_a_replay_still_marks_what_was_acknowledged(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a Kafka error or a DlqError let the replay mark the records Kafka acknowledged before it:
    any other (a bug, a store's error it does not map) left them unmarked, and the next replay sent them
    again. Now the replay stops naming the error, with those marked."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    values = small_letters(settings, 3)
    topic = settings.topic_name(SKU_INGESTED)
    store = FileStore(tmp_path)
    read = dlq.original_record
    calls: list[int] = []

    def fails_at_the_third(letter: DeadLetter, store: Any) -> tuple[bytes | None, bytes]:
        calls.append(letter.original_offset)
        if len(calls) == 3:
            raise RuntimeError("an error the replay does not expect")
        return read(letter, store)

    monkeypatch.setattr(dlq, "original_record", fails_at_the_third)
    with pytest.raises(DlqError) as stopped:
        replay(settings, store, read_dead_letters(settings, topic))
    assert "RuntimeError: an error the replay does not expect" in str(stopped.value)
    assert "the 2 records acknowledged before are marked" in str(stopped.value)
    assert record_count(kafka_bootstrap, topic) == 2

    monkeypatch.setattr(dlq, "original_record", read)
    report = replay(settings, store, read_dead_letters(settings, topic))
    assert (len(report.republished), report.already_replayed) == (1, 2)
    assert record_count(kafka_bootstrap, topic) == 3  # each once: before, 5
    sent = Counter(record.value for record in read_topic(kafka_bootstrap, topic, expect=3, timeout_s=30))
    assert sent == Counter(values)
