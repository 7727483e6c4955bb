"""The runtime while its commits keep failing (the group's coordinator away, the partitions' leaders
still serving): it holds at most ``max_uncommitted`` handled inputs for the commit to come, and takes
no more input until a commit goes through. Driven through the loop with a consumer double, no broker."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition

from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared import runtime
from shared.config import load_settings
from shared.runtime import Context, Emit, Stage
from tests.support.bus import file_store_uri, ingested_envelope, sku_ingested_payloads
from tests.support.runtime import _Producer, _record

RECORDS = 12
HELD = 4  # the stage's max_uncommitted
PER_POLL = 2


class _CoordinatorAway:
    """One partition's records, ``PER_POLL`` a poll unless paused; every commit times out until
    ``coordinator_back`` is set. Stops the stage once every record is committed (or after many polls)."""

    _cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0})

    def __init__(self, stage: Stage, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        self.stage, self.tp, self.records = stage, tp, records
        self.position = 0
        self.polls = 0
        self.paused: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.coordinator_back = False
        self.error: KafkaError = KafkaTimeoutError("the coordinator did not answer the commit")
        self.handed_while_away = 0  # records poll handed out while commits failed

    def subscribe(self, *args: object, **kwargs: object) -> None:
        pass

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.polls += 1
        if self.committed.get(self.tp) == len(self.records) or self.polls > 10_000:
            self.stage.stop()
            return {}
        if self.polls == 50:
            self.coordinator_back = True
        if self.tp in self.paused or self.position >= len(self.records):
            return {}
        batch = self.records[self.position : self.position + PER_POLL]
        self.position += len(batch)
        if not self.coordinator_back:
            self.handed_while_away += len(batch)
        return {self.tp: batch}

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not self.coordinator_back:
            raise self.error
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def group_metadata(self) -> SimpleNamespace:
        return SimpleNamespace(state=MemberState.STABLE)

    def close(self, autocommit: bool = False) -> None:
        pass


def test_a_stage_whose_commits_keep_failing_takes_no_more_input_until_one_goes_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, every handled input was kept for the commit to come, and rebuilt into the batch's
    duplicate check, for as long as the coordinator was away: memory and per-batch work without bound,
    and a restart meanwhile redid all of it. Once a commit goes through the stage takes input again,
    and every input is handled, delivered and counted once."""
    settings = load_settings(
        store_uri=file_store_uri(tmp_path), group_lag_interval_s=0, retry_backoff_initial_s=0.01
    )
    stage = Stage("review", settings=settings, max_uncommitted=HELD)
    handled: list[str] = []

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        handled.append(event.sku_id)
        return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]

    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    records = [
        _record(tp.topic, offset, ingested_envelope(payload).model_dump_json().encode())
        for offset, payload in enumerate(sku_ingested_payloads(stage.store, RECORDS))
    ]
    consumer, producer = _CoordinatorAway(stage, tp, records), _Producer()
    monkeypatch.setattr(runtime, "make_consumer", lambda *args, **kwargs: consumer)
    monkeypatch.setattr(runtime, "make_producer", lambda *args, **kwargs: producer)

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"):
        assert stage.run(install_signal_handlers=False, serve_health=False) == 0

    assert consumer.handed_while_away == HELD
    assert consumer.committed == {tp: RECORDS} and not consumer.paused
    assert sorted(handled) == sorted(set(handled)) and len(handled) == RECORDS
    assert len(producer.acked) == RECORDS
    counted = stage.metrics.registry.get_sample_value(
        "skuforge_messages_total", {"stage": "review", "topic": tp.topic, "outcome": "ok"}
    )
    assert counted == RECORDS
    held = [r for r in caplog.records if "takes no input" in r.getMessage()]
    assert len(held) == 1 and getattr(held[0], "uncommitted_inputs", None) == HELD


def test_a_commit_failing_on_every_retry_is_logged_at_once_then_at_most_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle stage (or one holding its intake) retries the commit every ``retry_backoff_initial_s``.
    Before, each failure logged a warning: one every 0.5 s for as long as the coordinator was away.
    A new error, or the first failure after a commit went through, is logged at once."""
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path)))
    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    records = [_record(tp.topic, offset, f"sku-{offset}".encode()) for offset in range(2)]
    consumer = _CoordinatorAway(stage, tp, records)
    stage._consumer = consumer
    clock = [1000.0]
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    retry_s = stage.settings.retry_backoff_initial_s

    def retry(times: int) -> None:
        for _ in range(times):
            clock[0] += retry_s
            stage._commit_left_over()

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"):
        stage._commit({tp: [(records[0], runtime._Outcome())]})
        retry(round(75 / retry_s))  # 75 s more of the coordinator away
        consumer.error = CommitFailedError("the group rebalanced")
        retry(1)
        consumer.coordinator_back = True
        retry(1)
        consumer.coordinator_back = False
        stage._commit({tp: [(records[1], runtime._Outcome())]})

    assert consumer.committed == {tp: 1}
    warnings = [r for r in caplog.records if r.getMessage().startswith("commit failed")]
    said = [
        (w.__dict__["error"].split(":")[0], w.__dict__["failed_commits_since_last_warning"]) for w in warnings
    ]
    assert said == [
        ("KafkaTimeoutError", 1),
        ("KafkaTimeoutError", round(60 / retry_s)),
        ("CommitFailedError", 1),
        ("CommitFailedError", 1),  # the first failure after the commit that went through
    ]
