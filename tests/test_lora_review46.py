"""The LoRA trainer, review 46: a publication that fails backs off its own series only (a new request of
another series trains and publishes at the next poll, not after the failed one's next try); and a
publish that fails for a fault of the trainer's own (a bug, not the broker) is not reported as the broker
not taking the event.

Training is stubbed (``stub_training``); the publications go to the real broker, through the real
``kafka_publisher``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from schemas.topics import ADAPTER_PUBLISHED
from services.lora_trainer.stage import GENERAL_STATE_KEY, PREFIX, PublicationFailed, kafka_publisher
from tests.support.bus import create_topics, file_store_uri, isolated_settings
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    CountingStore,
    gate_accepted,
    model_folder,
    record,
    record_accepted_event,
    refusing_publisher,
    trainer_on,
)


@pytest.mark.kafka
def test_a_series_whose_publication_fails_does_not_hold_back_another_series(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """Before, while any publication waited out its backoff, the polls planned nothing: a SKU of another
    series recorded meanwhile waited for the failed one's next try (up to about 5 minutes). Now the poll
    after the refusal trains and publishes the other series, and reads nothing of the refused job."""
    store = CountingStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)
    refusing, _, _ = refusing_publisher(tmp_path, kafka_bootstrap)
    shared = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"), flush_timeout_s=5.0)
    create_topics(shared, ADAPTER_PUBLISHED, partitions=1)
    taking = kafka_publisher(shared)
    tried: list[str | None] = []
    published: list[AdapterPublished] = []

    def publish(event: AdapterPublished) -> None:  # the cola series' topic refuses every record
        tried.append(event.series)
        (refusing if event.series == "cola" else taking)(event)
        published.append(event)

    trainer.publish = publish
    try:
        trainer.poll()  # cola trained and registered, its event refused: its next poll is skipped
        assert isinstance(trainer.last_error, PublicationFailed) and tried == ["cola"]
        [cola_job] = trainer.plan()
        record(store, captioned_sku(store, 2, usable_photos=1, series="fanta"))
        store.reads.clear()

        trainer.poll()

        assert [event.series for event in published] == ["fanta"]  # published at once
        assert tried == ["cola", "fanta"]  # cola's try skipped, as its backoff says
        assert not [key for key in store.reads if key.startswith(f"{PREFIX}/jobs/{cola_job.sha256}/")]
        assert isinstance(trainer.last_error, PublicationFailed)  # cola still waits
        assert trainer.last_error.adapter_id == cola_job.adapter_id and not trainer.last_error.tried
        assert len(stub_training) == 2

        trainer.poll()  # cola's try is due again
        assert tried == ["cola", "fanta", "cola"] and len(stub_training) == 2
    finally:
        refusing.close()
        taking.close()


def test_a_publish_that_fails_for_a_fault_of_the_trainer_s_own_does_not_blame_the_broker(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Any exception of the publish callable read as "the broker did not take it ... it is sent once the
    broker takes it": a bug in making the event (a TypeError, a ValidationError) sent the operator to a
    broker that was never asked. Now the log says it is the trainer's own fault, with its traceback."""
    store = CountingStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)

    def broken(event: AdapterPublished) -> None:  # a bug before any record reaches the producer
        raise TypeError("an envelope field of the wrong type")

    trainer.publish = broken
    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()

    failed = trainer.last_error
    assert isinstance(failed, PublicationFailed) and failed.tried
    assert "broker" not in failed.outlook.replace("not the broker's", ""), failed.outlook
    assert "the trainer's own" in failed.outlook and "TypeError" in failed.reason
    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    assert logged and all("the broker did not take it" not in r.getMessage() for r in logged)
    assert any(r.exc_info and r.exc_info[0] is TypeError for r in logged)  # where the bug is
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1


@pytest.mark.kafka
def test_a_general_adapter_whose_publication_fails_is_not_planned_while_it_waits(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """The general adapter's refused publication waits alone too: the polls between read neither its
    schedule nor its request files (its plan reads up to SKUFORGE_LORA_GENERAL_MAX_IMAGES of them), and
    a series recorded meanwhile publishes at once."""
    store = CountingStore(tmp_path / "store")
    for variant in (0, 1):
        record_accepted_event(store, gate_accepted(store, variant))
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )
    refusing, _, _ = refusing_publisher(tmp_path, kafka_bootstrap)
    published: list[AdapterPublished] = []

    def publish(event: AdapterPublished) -> None:  # the general adapter's topic refuses every record
        (refusing if event.kind == "general" else published.append)(event)

    trainer.publish = publish
    try:
        trainer.poll()  # the general adapter trained and registered, its event refused
        assert isinstance(trainer.last_error, PublicationFailed) and trainer.last_error.tried
        record(store, captioned_sku(store, 2, usable_photos=1, series="fanta"))
        store.reads.clear()
        store.listed.clear()

        trainer.poll()

        assert [event.series for event in published] == ["fanta"]
        general_reads = [key for key in store.reads if key.startswith(f"{PREFIX}/accepted/")]
        assert general_reads == [] and f"{PREFIX}/accepted/" not in store.listed
        assert GENERAL_STATE_KEY not in store.reads
        assert isinstance(trainer.last_error, PublicationFailed) and not trainer.last_error.tried

        trainer.poll()  # its try is due again: planned, refused again, not trained again
        assert isinstance(trainer.last_error, PublicationFailed) and trainer.last_error.tried
        assert len(stub_training) == 2
    finally:
        refusing.close()


@pytest.mark.parametrize("mend", ["delete", "fix"])
def test_an_accepted_request_left_out_and_then_mended_is_no_longer_counted_unreadable(
    tmp_path: Path, stub_training: list[Path], mend: str
) -> None:
    """skuforge_lora_requests_unreadable{kind="accepted"} was set only when the general job was planned:
    an operator who deleted or fixed the file the log named (as docs/ops.md's runbook says) saw the gauge,
    and SkuforgeLoraRequestsUnreadable, stay up until the next general job was due, hours later. Now each
    poll looks again at the files the last plan left out (only those)."""
    store = CountingStore(tmp_path / "store")
    for variant in range(3):
        record_accepted_event(store, gate_accepted(store, variant))
    bad = sorted(store.list_keys(f"{PREFIX}/accepted/"))[0]
    good = store.get_bytes(bad)
    store.put_json(bad, {**json.loads(good), "item_id": 7})
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=3
    )
    [event] = trainer.run_pending()
    assert event.kind == "general" and event.instance_images == 2
    unreadable = trainer.metrics.unreadable.labels("accepted")
    assert unreadable._value.get() == 1

    trainer.run_pending()  # not due again: still counted, the file still there and unreadable
    assert unreadable._value.get() == 1
    if mend == "delete":
        store.delete(bad)
    else:
        store.put_bytes(bad, good)
    store.reads.clear()

    trainer.run_pending()  # still not due (a mended file is not a new image): nothing trains

    assert unreadable._value.get() == 0
    assert len(stub_training) == 1
    accepted_reads = [key for key in store.reads if key.startswith(f"{PREFIX}/accepted/")]
    assert accepted_reads == ([] if mend == "delete" else [bad])  # the left-out file alone is read
