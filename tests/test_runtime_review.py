"""The runtime's batch bookkeeping after a failed flush or commit, driven through its consumer/producer seams.

No broker: a fake consumer records seeks, pauses and commits, and a fake producer acknowledges sends
on flush unless told to fail, so each test sets up exactly the failure it is about.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
)
from kafka.structs import MemberState, TopicPartition
from prometheus_client import Counter

from devstack.broker import free_port
from schemas.common import ImageRef
from schemas.envelope import (
    DLQ_INLINE_MAX_BYTES,
    MAX_DEAD_LETTER_DETAIL_CHARS,
    MAX_DEAD_LETTER_REASON_CHARS,
    MAX_STAGE_NAME_CHARS,
    DeadLetter,
    Envelope,
)
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared import dlq, runtime
from shared.bus import make_envelope
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput, TransientError
from shared.images import ImageRejected
from shared.observability import StageMetrics
from shared.runtime import Context, Emit, Stage, stale_after_s
from tests.support.bus import file_store_uri, sku_ingested_payloads
from tests.support.runtime import _Acked, _Consumer, _Producer, _record, _StoppingConsumer, _wired
from tests.support.store import ReadCountingStore


def _stage(tmp_path: Path, **settings: Any) -> Stage:
    return Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path), **settings))


def _records(stage: Stage, count: int, first_offset: int = 0) -> tuple[TopicPartition, list[ConsumerRecord]]:
    """``count`` valid sku.ingested records (SKU-00000...) on partition 0, then nothing else."""
    topic = stage.settings.topic_name(SKU_INGESTED)
    records = []
    for index, payload in enumerate(sku_ingested_payloads(stage.store, count)):
        envelope = make_envelope(
            SKU_INGESTED,
            payload,
            event_id=f"{index + 1:032x}",
            sku_id=payload.sku.sku_id,
            trace_id="trace",
            producer="test",
        )
        records.append(_record(topic, first_offset + index, envelope.model_dump_json().encode()))
    return TopicPartition(topic, 0), records


def _forward(event: Envelope[SkuIngested]) -> list[Emit]:
    return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]


def _forwarding_stage(tmp_path: Path) -> Stage:
    """A stage whose sku.ingested handler forwards each event (``_forward``)."""
    stage = _stage(tmp_path)

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        return _forward(event)

    return stage


def _sample(stage: Stage, name: str, **labels: str) -> float:
    value = stage.metrics.registry.get_sample_value(name, {"stage": stage.name, **labels})
    return value or 0.0


def test_a_failed_flush_rewinds_a_partition_that_backed_off_mid_batch_to_its_first_record(
    tmp_path: Path,
) -> None:
    """Records before a transient fault lost their outputs with the flush: they must be handled again."""
    stage = _stage(tmp_path)
    s3_down = {"SKU-00002"}
    handled: list[str] = []

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        if event.sku_id in s3_down:
            raise TransientError("the object store is down")
        handled.append(event.sku_id)
        return _forward(event)

    tp, records = _records(stage, 4, first_offset=10)
    consumer, producer = _wired(stage)
    producer.fail_flush = True
    stage._process_batch({tp: records})
    assert consumer.positions[tp] == 10, "the partition must restart where the batch started"
    assert consumer.committed == {}

    # Broker and store are back; the partition resumes from where it was rewound.
    producer.fail_flush = False
    s3_down.clear()
    handled.clear()
    stage._process_batch({tp: [r for r in records if r.offset >= consumer.positions[tp]]})
    assert handled == ["SKU-00000", "SKU-00001", "SKU-00002", "SKU-00003"]
    assert len(producer.acked) == 4 and consumer.committed == {tp: 14}


def test_the_runtime_counts_each_input_once_when_a_failed_flush_rewinds_the_batch(tmp_path: Path) -> None:
    stage = _forwarding_stage(tmp_path)
    tp, records = _records(stage, 1)
    records.append(_record(tp.topic, 1, b"not json"))
    consumer, producer = _wired(stage)
    producer.fail_flush = True
    stage._process_batch({tp: records})
    producer.fail_flush = False
    stage._process_batch({tp: records})
    assert consumer.committed == {tp: 2}
    stage._process_batch({tp: records[:1]})  # redelivered after the commit: a duplicate

    messages = "skuforge_messages_total"
    assert _sample(stage, messages, topic=tp.topic, outcome="ok") == 1
    assert _sample(stage, messages, topic=tp.topic, outcome="dlq") == 1
    assert _sample(stage, messages, topic=tp.topic, outcome="duplicate") == 1
    assert _sample(stage, "skuforge_dlq_total", topic=tp.topic, reason="not_json") == 1


def test_after_commit_counts_a_handler_run_twice_by_a_rewind_once(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    attempts = Counter("review_attempts_total", "handler runs", registry=stage.metrics.registry)
    accepted = Counter("review_accepted_total", "inputs accepted", registry=stage.metrics.registry)

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        attempts.inc()
        ctx.after_commit(accepted.inc)
        if event.sku_id == "SKU-00001":
            raise BadInput("refused", "counted too: its dead letter is committed")
        return _forward(event)

    tp, records = _records(stage, 2)
    consumer, producer = _wired(stage)
    producer.fail_flush = True
    stage._process_batch({tp: records})
    assert accepted._value.get() == 0, "nothing is committed yet"
    producer.fail_flush = False
    stage._process_batch({tp: records})

    assert consumer.committed == {tp: 2}
    assert attempts._value.get() == 4  # what counting inside the handler reports
    assert accepted._value.get() == 2


def test_a_batch_handler_names_the_event_of_an_after_commit_action(tmp_path: Path) -> None:
    """A batch that fails as a whole is retried event by event: the failed call's actions are dropped."""
    stage = _stage(tmp_path)
    images: list[str] = []

    @stage.batch_handler(SKU_INGESTED)
    def handle_batch(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[list[Emit]]:
        for event in events:
            ctx.after_commit(functools.partial(images.append, event.sku_id), event)
        if len(events) > 1:
            raise RuntimeError("a bug that only a batch meets")
        return [_forward(event) for event in events]

    tp, records = _records(stage, 3)
    consumer, _ = _wired(stage)
    stage._process_batch({tp: records})

    assert consumer.committed == {tp: 3}
    assert sorted(images) == ["SKU-00000", "SKU-00001", "SKU-00002"]
    with pytest.raises(ValueError, match="must name the event"):
        stage.context.after_commit(lambda: None)


def test_a_commit_the_broker_never_answers_does_not_end_the_stage(tmp_path: Path) -> None:
    """kafka-python raises KafkaTimeoutError from commit() when the coordinator is away that long."""
    stage = _stage(tmp_path)
    stage.handler(SKU_INGESTED)(lambda event, ctx: _forward(event))
    tp, records = _records(stage, 3)
    consumer, producer = _wired(stage, _Consumer(commit_error=KafkaTimeoutError("commit timed out")))

    stage._process_batch({tp: records[:2]})
    assert len(producer.acked) == 2 and consumer.committed == {}
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 0

    # The broker is back: the next batch's commit covers the offsets of the one before it, and counts
    # its inputs too (they were dropped from the counts for good).
    consumer.commit_error = None
    stage._process_batch({tp: records[2:]})
    assert consumer.committed == {tp: 3}
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 3


def test_an_idle_stage_commits_what_a_failed_commit_left(tmp_path: Path) -> None:
    """With no next input to carry them, the offsets stayed uncommitted (and the inputs uncounted)."""
    stage = _stage(tmp_path, retry_backoff_initial_s=30.0)
    stage.handler(SKU_INGESTED)(lambda event, ctx: _forward(event))
    tp, records = _records(stage, 2)
    consumer, _ = _wired(stage, _Consumer(commit_error=KafkaTimeoutError("commit timed out")))
    stage._process_batch({tp: records})
    stage._commit_left_over()  # the first idle turn tries at once, and fails again
    consumer.commit_error = None
    stage._commit_left_over()  # within the back-off: not tried
    assert consumer.committed == {}
    stage._commit_left_over(now=True)  # as at a stop
    assert consumer.committed == {tp: 2}
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 2
    stage._commit_left_over(now=True)  # nothing left: no second count
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 2


def test_inputs_whose_commit_failed_are_counted_once_wherever_they_end(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    accepted = Counter("review_accepted_total", "inputs accepted", registry=stage.metrics.registry)

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        ctx.after_commit(accepted.inc)
        return _forward(event)

    tp, records = _records(stage, 4)
    other = TopicPartition(tp.topic, 1)
    moved = [_record(tp.topic, 0, records[3].value)]
    moved[0] = moved[0]._replace(partition=1)
    consumer, _ = _wired(stage, _Consumer(commit_error=KafkaTimeoutError("commit timed out")))
    stage._process_batch({tp: records[:2], other: moved})
    # Once the broker answers, the next commit covers the first batch's offsets and counts its inputs.
    consumer.commit_error = None
    stage._forget_partitions([other])  # revoked meanwhile: its next owner redelivers and counts it
    stage._process_batch({tp: records[2:3]})
    assert consumer.committed == {tp: 3}
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 3
    assert accepted._value.get() == 3
    stage._process_batch({tp: records[3:]})
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 4
    assert accepted._value.get() == 4


def test_healthz_waits_for_as_long_as_the_configured_batch_may_take() -> None:
    # A fixed 15 minutes killed (liveness) a stage configured for 30-minute batches mid-batch, and
    # left one stuck for 10-15 minutes, already dropped from its group, reporting healthy.
    long_batches = Settings(max_poll_interval_ms=1_800_000)
    assert 1_800 < stale_after_s(long_batches) <= 1_900
    assert Settings().max_poll_interval_ms / 1000 < stale_after_s(Settings()) < 900


def test_a_stage_reports_its_input_topics_at_zero_before_the_first_message(tmp_path: Path) -> None:
    """increase() and rate() ignore a series' first sample: a count born at 1 hides the first input after
    every restart (SkuforgeNoImagesStored paged one SKU late), so each outcome starts at 0."""
    stage = _stage(tmp_path)
    stage.handler(SKU_INGESTED)(lambda event, ctx: _forward(event))
    topic = stage.settings.topic_name(SKU_INGESTED)
    registry = stage.metrics.registry

    def messages(outcome: str) -> float | None:
        labels = {"stage": stage.name, "topic": topic, "outcome": outcome}
        return registry.get_sample_value("skuforge_messages_total", labels)

    assert {outcome: messages(outcome) for outcome in ("ok", "dlq", "duplicate", "retry")} == {
        "ok": 0.0,
        "dlq": 0.0,
        "duplicate": 0.0,
        "retry": 0.0,
    }
    tp, records = _records(stage, 1)
    _wired(stage)
    stage._process_batch({tp: records})
    assert messages("ok") == 1.0 and messages("dlq") == 0.0


def test_an_image_reference_over_the_byte_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """An event may point at an object as large as it says; over max_image_bytes it is refused by the
    reference's size, without reading the object (before, it was read whole and then refused)."""
    store = ReadCountingStore(tmp_path / "store")
    ref = store.put_bytes("images/huge.png", b"\0" * 4096, content_type="image/png")
    context = Context(
        "matting", store, Settings(max_image_bytes=1024), StageMetrics("matting"), logging.getLogger("test")
    )
    with pytest.raises(ImageRejected) as refused:
        context.read_image(ref)
    assert refused.value.reason == "too_large_bytes"
    with pytest.raises(ImageRejected):
        context.read_mask(ref)
    assert store.bytes_read == 0


@pytest.mark.parametrize(
    ("figures", "reason", "said"),
    [
        ({"width": 100_000, "height": 100_000}, "too_many_pixels", "it is compared pixel by pixel"),
        ({"bytes": 10**12}, "too_large_bytes", "at most 1024 are allowed"),
    ],
)
def test_an_image_reference_is_refused_on_its_own_figures_before_it_is_read(
    tmp_path: Path, figures: dict[str, int], reason: str, said: str
) -> None:
    """The gate and the trainstore refuse an image an event says is over the pixel or byte limit
    without reading it (one function for both: ``Context.refuse_unread``); the detail says why the
    stage needs the image at its stated size."""
    store = ReadCountingStore(tmp_path / "store")
    stored = store.put_bytes("images/huge.png", b"\0" * 512, content_type="image/png")
    ref = ImageRef(**{**stored.model_dump(), "width": 64, "height": 64, **figures})
    context = Context(
        "gate", store, Settings(max_image_bytes=1024), StageMetrics("gate"), logging.getLogger("test")
    )
    with pytest.raises(ImageRejected) as refused:
        context.refuse_unread(ref, "it is compared pixel by pixel")
    assert (refused.value.reason, store.bytes_read) == (reason, 0)
    assert said in (refused.value.detail or "")
    context.refuse_unread(ImageRef(**{**stored.model_dump(), "width": 64, "height": 64}), "why")


class _SizeLimitedProducer(_Producer):
    """Refuses a record over 1 MiB at send(), as kafka-python does (``max_request_size``)."""

    def send(self, topic: str, key: bytes, value: bytes) -> _Acked:
        if len(key) + len(value) > 1_048_576:
            raise MessageSizeTooLargeError(f"the message is {len(key) + len(value)} bytes")
        return super().send(topic, key, value)


def _process_under_kafkas_size_limit(
    stage: Stage, tp: TopicPartition, records: list[ConsumerRecord]
) -> tuple[_Consumer, _SizeLimitedProducer]:
    """Handles one batch of ``records`` with a producer that refuses what Kafka would; returns the
    consumer (its commits) and the producer (what it acked)."""
    consumer = _Consumer()
    stage._consumer = consumer
    producer = _SizeLimitedProducer()
    stage._producer = producer
    stage._process_batch({tp: records})
    return consumer, producer


@pytest.mark.parametrize("batched", [False, True])
def test_an_output_too_large_for_kafka_is_dead_lettered_not_retried_forever(
    tmp_path: Path, batched: bool
) -> None:
    # Before, send() raised MessageSizeTooLargeError (a KafkaError): the partition was rewound and
    # paused as if the broker were away, every time, and the input never reached the DLQ.
    stage = _stage(tmp_path)
    photo = sku_ingested_payloads(stage.store, 1)[0].photos[0]

    def forward_large(event: Envelope[SkuIngested]) -> list[Emit]:
        photos = [photo.model_copy(update={"photo_id": f"p{index}"}) for index in range(6_000)]
        return [Emit(PASSTHROUGH_OUT, event.payload.model_copy(update={"photos": photos}), key="out")]

    if batched:

        @stage.batch_handler(SKU_INGESTED)
        def handle_batch(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[Any]:
            return [
                forward_large(event) if event.sku_id == "SKU-00001" else _forward(event) for event in events
            ]

    else:

        @stage.handler(SKU_INGESTED)
        def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
            return forward_large(event) if event.sku_id == "SKU-00001" else _forward(event)

    tp, records = _records(stage, 3)
    consumer, producer = _process_under_kafkas_size_limit(stage, tp, records)
    assert consumer.committed == {tp: 3} and not consumer.paused
    topics = [topic for topic, _ in producer.acked]
    assert topics == [
        stage.settings.topic_name(PASSTHROUGH_OUT),
        tp.topic + ".dlq",
        stage.settings.topic_name(PASSTHROUGH_OUT),
    ]
    letter = DeadLetter.model_validate_json(producer.acked[1][1])
    assert (
        letter.reason == "output_too_large" and "over the 1000000 a Kafka record may carry" in letter.detail
    )
    assert _sample(stage, "skuforge_dlq_total", topic=tp.topic, reason="output_too_large") == 1


def test_a_partition_that_keeps_failing_keeps_backing_off_at_the_cap(tmp_path: Path) -> None:
    """The back-off was initial * 2 ** (failures - 1) before the cap: the 1025th failure in a row of
    one partition (8.5 hours of an S3 refusing the credentials) raised OverflowError and ended the stage."""
    stage = _stage(tmp_path, retry_backoff_initial_s=0.5, retry_backoff_max_s=30.0)
    consumer, _ = _wired(stage)
    tp = TopicPartition("t", 0)
    stage._failures[tp] = 5000
    before = time.monotonic()
    stage._back_off(tp, 7, TransientError("the store refuses this deployment's credentials"))
    assert consumer.positions[tp] == 7 and tp in consumer.paused
    assert 0.8 * 30.0 <= stage._resume_at[tp] - before <= 1.2 * 30.0 + 1.0
    assert stage._failures[tp] == 5001


def test_the_same_event_id_on_two_topics_is_two_inputs_not_a_duplicate(tmp_path: Path) -> None:
    """The gate gives its accepted and its pending decision on an item the same id; the trainstore
    consumes both. Completed inputs were remembered by id alone, so after the pending one the accepted
    one (the item decided again) was skipped as a duplicate and never stored."""
    stage = _stage(tmp_path)
    handled: list[str] = []

    @stage.handler(SKU_INGESTED)
    def first(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        handled.append("first")
        return []

    @stage.handler(PASSTHROUGH_OUT)
    def second(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        handled.append("second")
        return []

    tp, records = _records(stage, 1)
    other = TopicPartition(stage.settings.topic_name(PASSTHROUGH_OUT), 0)
    _wired(stage)
    stage._process_batch({tp: records})
    first_event = Envelope[SkuIngested].model_validate_json(records[0].value)
    same_id = make_envelope(
        PASSTHROUGH_OUT,
        first_event.payload,
        event_id=first_event.event_id,
        sku_id=first_event.sku_id,
        trace_id="trace",
        producer="test",
    )
    again = _record(other.topic, 0, same_id.model_dump_json().encode())
    stage._process_batch({other: [again]})
    assert handled == ["first", "second"]
    stage._process_batch({other: [again]})  # a replay on the same topic is still a duplicate
    assert handled == ["first", "second"]
    assert _sample(stage, "skuforge_messages_total", topic=other.topic, outcome="duplicate") == 1


@pytest.mark.parametrize("batched", [False, True], ids=["handler", "batch_handler"])
def test_two_copies_of_one_event_in_one_poll_are_handled_once(tmp_path: Path, batched: bool) -> None:
    """A producer's retry (or a replay beside its original) put one event twice in one poll: completed
    ids were remembered only at the commit, so both copies were handled and both produced outputs."""
    stage = _stage(tmp_path)
    handled: list[str] = []
    if batched:

        @stage.batch_handler(SKU_INGESTED)
        def handle_batch(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[list[Emit]]:
            handled.extend(event.event_id for event in events)
            return [_forward(event) for event in events]

    else:

        @stage.handler(SKU_INGESTED)
        def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
            handled.append(event.event_id)
            return _forward(event)

    tp, records = _records(stage, 2)
    copy = _record(tp.topic, 2, records[0].value)
    consumer, producer = _wired(stage)
    stage._process_batch({tp: [*records, copy]})
    assert handled == [f"{1:032x}", f"{2:032x}"]
    assert len(producer.acked) == 2 and consumer.committed == {tp: 3}
    messages = "skuforge_messages_total"
    assert _sample(stage, messages, topic=tp.topic, outcome="ok") == 2
    assert _sample(stage, messages, topic=tp.topic, outcome="duplicate") == 1


def test_a_large_original_is_kept_under_a_key_a_recreated_topic_cannot_reuse(tmp_path: Path) -> None:
    """A topic deleted and created again starts at offset 0: its first large dead letter overwrote the
    original an earlier letter at offset 0 refers to, and that letter could no longer be replayed."""
    from shared.runtime import DLQ_INLINE_MAX_BYTES

    stage = _stage(tmp_path)
    topic = stage.settings.topic_name(SKU_INGESTED)
    before, after = (bytes([n]) * (DLQ_INLINE_MAX_BYTES + 1) for n in (1, 2))
    _, first = stage._keep_original(_record(topic, 0, before), "value", before)
    assert stage._keep_original(_record(topic, 0, before), "value", before)[1] == first  # a rewind
    _, second = stage._keep_original(_record(topic, 0, after), "value", after)
    assert first is not None and second is not None
    assert stage.store.read_verified(first) == before and stage.store.read_verified(second) == after


def test_a_tombstone_and_its_replayed_copy_are_both_empty_messages(tmp_path: Path) -> None:
    """`skuforge dlq replay` sends a dead-lettered tombstone back with an empty value, not None."""
    stage = _forwarding_stage(tmp_path)
    tp, _ = _records(stage, 0)
    tombstone = ConsumerRecord(tp.topic, 0, -1, 0, 0, 0, b"key", None, [], None, 3, -1, -1)
    replayed = _record(tp.topic, 1, b"")
    consumer, producer = _wired(stage)
    stage._process_batch({tp: [tombstone, replayed]})
    assert consumer.committed == {tp: 2}
    letters = [DeadLetter.model_validate_json(value) for _, value in producer.acked]
    assert [letter.reason for letter in letters] == ["empty_message", "empty_message"]
    assert _sample(stage, "skuforge_dlq_total", topic=tp.topic, reason="not_json") == 0


class _FailingAfterJoin:
    """A consumer that joins its group on the first poll, then fails as a broker refusal does."""

    config = {"group_id": "review-group"}

    def __init__(self) -> None:
        self._cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0})
        self.polls = 0
        self.closed = False

    def subscribe(self, topics: list[str], listener: object = None) -> None:
        pass

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.polls += 1
        if self.polls > 1:
            raise GroupAuthorizationFailedError("not allowed in the group any more")
        return {}

    def group_metadata(self) -> Any:
        return SimpleNamespace(state=MemberState.STABLE)

    def assignment(self) -> set[TopicPartition]:
        return set()

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


def test_a_stage_whose_loop_ended_is_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ready() stayed True after run() raised: the console runs its intake stage again after a fault,
    and answered /readyz 200 all the while nothing consumed."""
    stage = _forwarding_stage(tmp_path)
    stage.settings = stage.settings.model_copy(update={"group_lag_interval_s": 0.0})
    consumer = _FailingAfterJoin()
    monkeypatch.setattr(runtime, "make_consumer", lambda *args, **kwargs: consumer)
    monkeypatch.setattr(
        runtime, "make_producer", lambda *args, **kwargs: SimpleNamespace(close=lambda **kw: None)
    )
    joined: list[bool] = []
    real_poll = consumer.poll

    def poll(timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumerRecord]]:
        joined.append(stage.ready())
        return real_poll(timeout_ms)

    consumer.poll = poll  # type: ignore[method-assign]
    # The refusal ends the loop as a one-line ConfigError (test_runtime_group_refusals.py).
    with pytest.raises(ConfigError, match="refused consumer group review-group"):
        stage.run(install_signal_handlers=False, serve_health=False)
    assert joined == [False, True]  # it was ready while it consumed
    assert consumer.closed and not stage.ready()


def test_a_dead_letter_whose_original_the_store_refuses_waits_instead_of_ending_the_stage(
    tmp_path: Path,
) -> None:
    """A large original is kept in the store; a folder in the way of its key is a BadInput
    ("key_conflict") from the store, which escaped the loop and ended the stage (and every restart)."""
    stage = _forwarding_stage(tmp_path)
    topic = stage.settings.topic_name(SKU_INGESTED)
    huge = b"x" * (runtime.DLQ_INLINE_MAX_BYTES + 1)  # not JSON, and too large to inline
    tp, records = TopicPartition(topic, 0), [_record(topic, 7, huge)]
    digest = hashlib.sha256(huge).hexdigest()[:16]
    blocker = tmp_path / runtime.DLQ_ORIGINALS_PREFIX / topic / f"0-7-{digest}.value"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_bytes(b"")
    consumer, producer = _wired(stage)
    stage._process_batch({tp: records})
    assert consumer.positions[tp] == 7 and tp in consumer.paused
    assert consumer.committed == {} and producer.acked == []

    # The operator clears the way: the record is dead-lettered whole.
    (blocker / "keep").unlink()
    blocker.rmdir()
    stage._process_batch({tp: records})
    assert consumer.committed == {tp: 8}
    letter = DeadLetter.model_validate_json(producer.acked[0][1])
    assert letter.reason == "not_json" and letter.original_value_ref is not None
    assert stage.store.read_verified(letter.original_value_ref) == huge


def test_a_keyboard_interrupt_in_a_batch_handler_is_not_taken_for_a_poison_event(tmp_path: Path) -> None:
    """Re-running a failed micro-batch one event at a time caught BaseException: a Ctrl-C (or
    SystemExit) in the handler was retried as a handler error, then dead-lettered."""
    stage = _stage(tmp_path)

    @stage.batch_handler(SKU_INGESTED)
    def handle(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[list[Emit]]:
        if len(events) > 1:
            raise ValueError("one poison event fails the batch")
        raise KeyboardInterrupt

    tp, records = _records(stage, 2)
    consumer, producer = _wired(stage)
    with pytest.raises(KeyboardInterrupt):
        stage._process_batch({tp: records})
    assert consumer.committed == {} and producer.acked == []


def test_a_stage_answers_on_its_port_while_its_models_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listened while a captioner copied its VLM from S3: the startup probe killed a load over
    five minutes, and SkuforgeStageDown paged after two. Now /metrics and /healthz answer, /readyz
    says not ready, and the port is free for the stage's own server once the models are open."""
    import urllib.error
    import urllib.request

    from shared.runtime import run_stage_loading

    port = free_port()
    monkeypatch.setenv("SKUFORGE_METRICS_PORT", str(port))
    seen: dict[str, tuple[int, str]] = {}

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    class Loaded(Exception):
        """Stands for the stage built: the test stops before it would join a group."""

    def build() -> Stage:
        seen["metrics"] = get("/metrics")
        seen["healthz"] = get("/healthz")
        seen["readyz"] = get("/readyz")
        raise Loaded

    with pytest.raises(Loaded):
        run_stage_loading("captioner", 1, build)
    status, metrics = seen["metrics"]
    assert status == 200 and 'skuforge_stage_loading{stage="captioner"} 1.0' in metrics
    assert seen["healthz"][0] == 200 and seen["readyz"][0] == 503
    with socket.socket() as probe:  # released for the stage's own health server
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_stop_while_the_broker_holds_back_acknowledgements_returns_0_and_frees_the_health_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during an outage: the producer's close() flushes first and raises KafkaTimeoutError. It
    escaped run() (a traceback instead of 0) before the health server was stopped (its port stayed bound)."""
    port = free_port()
    stage = _stage(tmp_path, metrics_port=port, group_lag_interval_s=0)
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])

    class Producer:
        def close(self, timeout: float | None = None) -> None:
            raise KafkaTimeoutError("Timeout waiting for future")

    monkeypatch.setattr(runtime, "make_consumer", lambda *args, **kwargs: _StoppingConsumer(stage))
    monkeypatch.setattr(runtime, "make_producer", lambda *args, **kwargs: Producer())
    assert stage.run(install_signal_handlers=False) == 0
    with socket.socket() as probe:  # released
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_only_the_newest_records_failed_attempts_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record's failed attempts outlive a move of its partition (tests/test_runtime_review38.py), so
    those of a record that the partition's next holder handled are never committed here: past
    ``ATTEMPTS_KEPT`` records the oldest go, and they do not pile up for the life of the process."""
    monkeypatch.setattr(runtime, "ATTEMPTS_KEPT", 2)
    stage = _stage(tmp_path)

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        raise RuntimeError("a bug this input sets off")

    _wired(stage)
    _, [poison] = _records(stage, 1)
    moved = [TopicPartition(poison.topic, partition) for partition in range(4)]
    for tp in moved:
        stage._process_batch({tp: [poison]})
        runtime._RebalanceListener(stage).on_partitions_revoked([tp])  # for good
    assert list(stage._attempts) == [(moved[2], 0), (moved[3], 0)]


@pytest.mark.parametrize("batched", [False, True], ids=["per-event", "batch"])
def test_an_input_whose_outputs_are_refused_runs_none_of_its_after_commit_actions(
    tmp_path: Path, batched: bool
) -> None:
    """The actions count what a handler did (the gate's "accepted"); an input whose outputs the
    runtime refused (``output_too_large``) went to the DLQ and was counted as done all the same (the
    gate's ``skuforge_gate_decisions_total`` grew with no event sent)."""
    stage = _stage(tmp_path)
    accepted = Counter("accepted_total", "inputs handled", registry=stage.metrics.registry)
    photo = sku_ingested_payloads(stage.store, 1)[0].photos[0]

    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        ctx.after_commit(accepted.inc, event) if batched else ctx.after_commit(accepted.inc)
        photos = [photo.model_copy(update={"photo_id": f"p{index}"}) for index in range(6_000)]
        return [Emit(PASSTHROUGH_OUT, event.payload.model_copy(update={"photos": photos}), key="out")]

    if batched:
        stage.batch_handler(SKU_INGESTED)(lambda events, ctx: [handle(event, ctx) for event in events])
    else:
        stage.handler(SKU_INGESTED)(handle)
    tp, records = _records(stage, 1)
    _, producer = _wired(stage)
    stage._process_batch({tp: records})
    assert [topic for topic, _ in producer.acked] == [tp.topic + ".dlq"]
    assert stage.metrics.registry.get_sample_value("accepted_total") == 0.0


def test_a_dead_letter_whose_reason_is_too_long_is_written_cut_with_a_mark(tmp_path: Path) -> None:
    """A reason or detail may hold the input's own text (a handler's BadInput, an exception's message):
    a 2 MB one made a letter Kafka refused (MessageSizeTooLargeError), so the partition was rewound and
    paused at every retry, and nothing after the record was handled. A detail was cut at 2,000
    characters without a word. Now both are cut to the letter's bounds with a mark."""
    stage = _stage(tmp_path)
    long_reason, long_detail = "r" * 2_000_000, "d" * 2_000_000

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        if event.sku_id == "SKU-00001":
            raise BadInput(long_reason, long_detail)
        return _forward(event)

    tp, records = _records(stage, 3)
    consumer, producer = _process_under_kafkas_size_limit(stage, tp, records)
    assert consumer.committed == {tp: 3} and not consumer.paused
    letter = DeadLetter.model_validate_json(producer.acked[1][1])
    assert len(letter.reason) == MAX_DEAD_LETTER_REASON_CHARS
    assert letter.reason.startswith("rrr") and letter.reason.endswith("more characters cut]")
    assert len(letter.detail) == MAX_DEAD_LETTER_DETAIL_CHARS
    assert letter.detail.startswith("rrr") and letter.detail.endswith("more characters cut]")
    assert _sample(stage, "skuforge_dlq_total", topic=tp.topic, reason=letter.reason) == 1


def test_an_original_at_the_inline_limit_rides_whole_in_its_letter_and_one_byte_more_goes_to_the_store(
    tmp_path: Path,
) -> None:
    """The letter's bounds hold the design's rule: key and value up to DLQ_INLINE_MAX_BYTES each ride in
    the letter (with its own key, the original's, the record stays under Kafka's 1 MiB), larger ones are
    kept in the store; either way the original's bytes come back whole."""
    stage = _forwarding_stage(tmp_path)
    topic = stage.settings.topic_name(SKU_INGESTED)
    at_limit = b"\xff" * DLQ_INLINE_MAX_BYTES  # not JSON
    over = b"\xfe" * (DLQ_INLINE_MAX_BYTES + 1)
    tp = TopicPartition(topic, 0)
    records = [
        ConsumerRecord(topic, 0, -1, 0, 0, 0, at_limit, at_limit, [], None, -1, -1, -1),
        ConsumerRecord(topic, 0, -1, 1, 0, 0, over, over, [], None, -1, -1, -1),
    ]
    consumer, producer = _process_under_kafkas_size_limit(stage, tp, records)
    assert consumer.committed == {tp: 2}
    inline, stored = (DeadLetter.model_validate_json(value) for _, value in producer.acked)
    assert dlq.original_record(inline, stage.store) == (at_limit, at_limit)
    assert inline.original_value_ref is None and inline.original_key_ref is None
    assert dlq.original_record(stored, stage.store) == (over, over)
    assert stored.original_value_ref is not None and stored.original_key_ref is not None


def test_a_stage_name_a_dead_letter_cannot_carry_is_refused_when_the_stage_is_made(tmp_path: Path) -> None:
    """A letter names its stage, and a replay finds the stage by that name: a name over the letter's
    bound would make every dead letter of the stage fail to build, so the stage is refused at once."""
    settings = load_settings(store_uri=file_store_uri(tmp_path))
    with pytest.raises(ValueError, match=f"1 to {MAX_STAGE_NAME_CHARS} characters"):
        Stage("s" * (MAX_STAGE_NAME_CHARS + 1), settings=settings)


def test_a_copy_beside_an_event_that_is_rewound_does_not_mark_the_event_done(tmp_path: Path) -> None:
    """Two copies of one event in one poll, on two partitions (a key's partition changes when the
    topic grows): the batch handler's transient fault rewound the first copy's partition, while the
    second, a duplicate of it, was committed and marked the event done, so the rewound copy came
    back as a duplicate too and the event's outputs were never produced."""
    stage = _stage(tmp_path)
    calls: list[list[str]] = []

    @stage.batch_handler(SKU_INGESTED)
    def handle_batch(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[list[Emit]]:
        calls.append([event.event_id for event in events])
        if len(calls) == 1:
            raise TransientError("the model server is restarting")
        return [_forward(event) for event in events]

    tp, [record] = _records(stage, 1)
    other = TopicPartition(tp.topic, 1)
    copy = ConsumerRecord(tp.topic, 1, -1, 0, 0, 0, record.key, record.value, [], None, 3, -1, -1)
    consumer, producer = _wired(stage)
    stage._process_batch({tp: [record], other: [copy]})
    assert consumer.positions[tp] == 0 and tp in consumer.paused and not producer.acked
    assert consumer.committed == {other: 1}  # the copy: nothing of its own to do
    stage._process_batch({tp: [record]})  # the rewound partition, after its back-off
    assert calls == [[f"{1:032x}"], [f"{1:032x}"]]
    assert [topic for topic, _ in producer.acked] == [stage.settings.topic_name(PASSTHROUGH_OUT)]
    assert consumer.committed == {tp: 1, other: 1}
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 1


def test_a_replay_of_an_event_whose_copy_rode_beside_its_dead_letter_is_handled(tmp_path: Path) -> None:
    """An event dead-lettered with a copy of it in the same poll: the copy, a duplicate, marked the
    event done, so replaying the letter once the cause was fixed was taken for a duplicate and
    committed unhandled (its replay marker written: the event was lost)."""
    stage = _stage(tmp_path)
    object_back = False

    @stage.handler(SKU_INGESTED)
    def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        if not object_back:
            raise BadInput("object_missing", "no object at file://photo")
        return _forward(event)

    tp, [record] = _records(stage, 1)
    consumer, producer = _wired(stage)
    stage._process_batch({tp: [record, _record(tp.topic, 1, record.value)]})
    [(letter_topic, letter)] = producer.acked  # one letter for the event, not one per copy
    assert letter_topic == tp.topic + ".dlq" and consumer.committed == {tp: 2}
    assert DeadLetter.model_validate_json(letter).reason == "object_missing"
    object_back = True
    stage._process_batch({tp: [_record(tp.topic, 2, record.value)]})  # `skuforge dlq replay`
    assert producer.acked[1:] and producer.acked[1][0] == stage.settings.topic_name(PASSTHROUGH_OUT)
    assert consumer.committed == {tp: 3}
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 1


class _NoDeadLetterTopic(_Producer):
    """A producer for a cluster without the DLQ topic: kafka-python's send() waits max_block_ms for
    the topic's metadata, then raises KafkaTimeoutError."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0  # sends that waited out max_block_ms

    def send(self, topic: str, key: bytes, value: bytes) -> _Acked:
        if topic.endswith(".dlq"):
            self.waits += 1
            raise KafkaTimeoutError(f"Failed to update metadata after 2.0 secs for {topic}")
        return super().send(topic, key, value)


def test_a_partition_whose_dead_letter_cannot_be_sent_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """One partition's dead letter could not be sent (its DLQ topic missing): every partition of the
    poll was rewound and backed off with it, its outputs sent again later, and the others' back-off grew
    with each of that partition's retries, though the docstring says other partitions go on."""
    stage = _forwarding_stage(tmp_path)
    tp, [record] = _records(stage, 1)
    good = TopicPartition(tp.topic, 1)
    good_record = ConsumerRecord(tp.topic, 1, -1, 7, 0, 0, record.key, record.value, [], None, 3, -1, -1)
    consumer, _ = _wired(stage)
    producer = _NoDeadLetterTopic()
    stage._producer = producer
    also_bad = TopicPartition(tp.topic, 2)
    bad_record = ConsumerRecord(tp.topic, 2, -1, 3, 0, 0, b"key", b"not json", [], None, 3, -1, -1)
    stage._process_batch(
        {tp: [_record(tp.topic, 0, b"not json")], good: [good_record], also_bad: [bad_record]}
    )
    # The letters wait, nothing is lost; and the DLQ topic's metadata was waited for once, not per letter.
    assert consumer.paused == {tp, also_bad} and consumer.positions == {tp: 0, also_bad: 3}
    assert producer.waits == 1
    assert consumer.committed == {good: 8}
    assert [topic for topic, _ in producer.acked] == [stage.settings.topic_name(PASSTHROUGH_OUT)]
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="ok") == 1
    assert _sample(stage, "skuforge_messages_total", topic=tp.topic, outcome="retry") == 2
