"""The runtime: a micro-batch whose handler raised says so, at most once a minute per topic, and counts it;
a consumer whose close fails when the stage finds no broker does not hide that; a producer whose close
fails at the stop with any error, not only a Kafka one, ends the stop as any other; so does any
error of the stop steps before the closes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from kafka.structs import TopicPartition

from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared import runtime
from shared.config import load_settings
from shared.runtime import Context, Emit, KafkaUnreachable, Stage
from tests.support.bus import file_store_uri, ingested_envelope, sku_ingested_payloads
from tests.support.runtime import _Producer, _record, _StoppingConsumer, _wired


def test_a_batch_handler_that_cannot_take_batches_is_warned_of_once_a_minute_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each event of a batch that raised is run alone. Before, nothing said why: with a model that
    cannot take batches every chunk failed and was run one at a time, and the only sign was slowness."""
    stage = Stage("review", settings=load_settings(store_uri=file_store_uri(tmp_path)))

    @stage.batch_handler(SKU_INGESTED)
    def handle(events: Sequence[Envelope[SkuIngested]], ctx: Context) -> list[list[Emit]]:
        if len(events) > 1:
            raise ValueError("the model takes one image at a time")
        return [[Emit(PASSTHROUGH_OUT, event.payload, key="out")] for event in events]

    consumer, producer = _wired(stage)
    clock = [1000.0]
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    records = [
        _record(tp.topic, offset, ingested_envelope(payload).model_dump_json().encode())
        for offset, payload in enumerate(sku_ingested_payloads(stage.store, 7))
    ]
    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"):
        stage._process_batch({tp: records[:3]})
        clock[0] += 30
        stage._process_batch({tp: records[3:5]})
        clock[0] += 31
        stage._process_batch({tp: records[5:]})

    assert consumer.committed == {tp: 7} and len(producer.acked) == 7
    warnings = [r for r in caplog.records if r.getMessage().startswith("a batch handler raised")]
    said = [(w.__dict__["batch_size"], w.__dict__["failed_batches_since_last_warning"]) for w in warnings]
    assert said == [(3, 1), (2, 2)]
    assert "ValueError: the model takes one image at a time" in warnings[0].getMessage()
    failed = stage.metrics.registry.get_sample_value(
        "skuforge_batch_handler_failures_total", {"stage": "review", "topic": tp.topic, "error": "ValueError"}
    )
    assert failed == 3


def test_a_consumer_whose_close_fails_does_not_hide_that_no_broker_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer found a broker, the producer none: the consumer is closed before the stage reports
    KafkaUnreachable. Before, a close that raised replaced it, and the user read the close's error."""
    settings = load_settings(store_uri=file_store_uri(tmp_path), group_lag_interval_s=0)
    stage = Stage("review", settings=settings)
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    consumer = _StoppingConsumer(stage, close_error=KafkaTimeoutError("leaving the group timed out"))

    def no_broker(*args: object, **kwargs: object) -> _Producer:
        raise KafkaConnectionError("no broker answered")

    monkeypatch.setattr(runtime, "make_consumer", lambda *args, **kwargs: consumer)
    monkeypatch.setattr(runtime, "make_producer", no_broker)

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"), pytest.raises(KafkaUnreachable):
        stage.run(install_signal_handlers=False)

    assert stage.health is not None and stage.health._httpd.socket.fileno() == -1  # the port let go
    assert any("leaving the group timed out" in record.getMessage() for record in caplog.records)


class _FailingCloseProducer(_Producer):
    """A producer whose close raises an error that is not a KafkaError."""

    def close(self, timeout: float | None = None) -> None:
        raise OSError("the producer's I/O thread could not be joined")


def test_a_producer_whose_close_fails_with_any_error_at_the_stop_is_logged_and_the_stage_returns_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, only a KafkaError was caught: any other escaped run() after a stop that had committed all
    it could, and left the health port bound."""
    settings = load_settings(store_uri=file_store_uri(tmp_path), group_lag_interval_s=0)
    stage = Stage("review", settings=settings)
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    monkeypatch.setattr(runtime, "make_consumer", lambda *args, **kwargs: _StoppingConsumer(stage))
    monkeypatch.setattr(runtime, "make_producer", lambda *args, **kwargs: _FailingCloseProducer())

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"):
        assert stage.run(install_signal_handlers=False, serve_health=False) == 0

    assert any("could not be joined" in record.getMessage() for record in caplog.records)


class _ClosingConsumer(_StoppingConsumer):
    """A consumer that says whether it was closed."""

    closed = False

    def close(self, autocommit: bool = False) -> None:
        self.closed = True


def test_a_stop_step_that_fails_before_the_closes_still_closes_both_clients_and_the_health_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Waiting for the revoked partitions' commits caught only a KafkaError: any other error (a bug,
    kafka-python's own assertion) skipped the consumer's and the producer's close and escaped run()
    after a stop that had committed all it could. Now it is logged and the stop ends as any other."""
    settings = load_settings(store_uri=file_store_uri(tmp_path), group_lag_interval_s=0)
    stage = Stage("review", settings=settings)
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    consumer, producer = _ClosingConsumer(stage), _Producer()
    monkeypatch.setattr(runtime, "make_consumer", lambda *args, **kwargs: consumer)
    monkeypatch.setattr(runtime, "make_producer", lambda *args, **kwargs: producer)

    def fails() -> None:
        raise AssertionError("the coordinator's state is not what the client expected")

    monkeypatch.setattr(stage, "_await_revoked_commits", fails)

    with caplog.at_level(logging.WARNING, logger="skuforge.runtime"):
        assert stage.run(install_signal_handlers=False) == 0

    assert consumer.closed and producer.closed
    assert stage.health is not None and stage.health._httpd.socket.fileno() == -1  # the port let go
    assert any("not what the client expected" in record.getMessage() for record in caplog.records)
