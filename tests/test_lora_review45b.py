"""The LoRA trainer, review 45b: a publication the broker does not take (away, not refusing) is tried
again on a growing interval, and the polls between read nothing of its job (each read the job's result
and weights again, only to fail the send again; they plan the series' requests, so that another series
is not held back, review 46); a roll-back reads its series' ``current/`` pointer once.

Training is stubbed (``stub_training``). The broker away is met as kafka-python meets it at ``send()``:
the topic's metadata never comes (here a topic not created, on the real broker, which creates none).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from schemas.topics import ADAPTER_PUBLISHED
from services.lora_trainer.stage import PREFIX, PublicationFailed, kafka_publisher
from tests.support.bus import create_topics, file_store_uri, isolated_settings
from tests.support.captioning import captioned_sku
from tests.support.lora import CountingStore, model_folder, record, trainer_on


@pytest.mark.kafka
def test_a_publication_the_broker_does_not_take_is_tried_on_a_growing_interval_reading_nothing_of_it_between(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """Before, every poll while the broker was away read the job's result and weights and tried the send
    again. Now the n-th failure in a row skips the next 2**(n-1) polls, which read nothing of the job (only
    the series' request files, planned); the first try once the broker takes it publishes."""
    store = CountingStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)
    # A short wait while the topic is missing (each failed send gives up after it); a long one once the
    # broker takes it: 1 s for the first acknowledged send after the topic is made was too short on a
    # loaded machine, and that send failing (a 5th failure) read as a wrong interval.
    away = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"), flush_timeout_s=1.0)
    send = kafka_publisher(away)
    publishers = [send]
    sent_at: list[int] = []
    published: list[AdapterPublished] = []
    poll = 0

    def counted(event: AdapterPublished) -> None:
        sent_at.append(poll)
        send(event)
        published.append(event)

    trainer.publish = counted
    read_at: list[int] = []
    try:
        for poll in range(1, 8):
            store.reads.clear()
            store.listed.clear()
            trainer.poll()
            assert isinstance(trainer.last_error, PublicationFailed), trainer.last_error
            assert "the broker did not take it" in trainer.last_error.outlook
            if [key for key in store.reads if not key.startswith(f"{PREFIX}/series/")]:  # the plan's
                read_at.append(poll)
        assert sent_at == [1, 3, 6]
        assert read_at == [1, 3, 6]
        assert len(stub_training) == 1  # trained once, at the first poll

        create_topics(away, ADAPTER_PUBLISHED, partitions=1)  # the broker takes it from now on
        send = kafka_publisher(away.model_copy(update={"flush_timeout_s": 60.0}))  # counted sends with it
        publishers.append(send)
        for poll in range(8, 12):  # noqa: B007 (counted reads it)
            trainer.poll()
        assert sent_at == [1, 3, 6, 11]  # 4 polls skipped after the third failure
        assert trainer.last_error is None and len(published) == 1
        assert len(stub_training) == 1
    finally:
        for publisher in publishers:
            publisher.close()


def test_a_roll_back_reads_its_series_pointer_once(tmp_path: Path, stub_training: list[Path]) -> None:
    """A roll-back read the pointer in run_job (to find the adapter it replaces, and count a roll-back
    cut short) and again in _publish, after run_job had rewritten it: the same record twice."""
    store = CountingStore(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    [first] = trainer_on(store, model, lora_rank=4, lora_class_images=0).run_pending()
    [second] = trainer_on(store, model, lora_rank=8, lora_class_images=0).run_pending()
    store.reads.clear()

    [rolled_back] = trainer_on(store, model, lora_rank=4, lora_class_images=0).run_pending()

    assert rolled_back.adapter_id == first.adapter_id != second.adapter_id
    assert rolled_back.publication == 2
    pointer_reads = [key for key in store.reads if key.startswith(f"{PREFIX}/current/")]
    # One look before the series' lease is taken (a series published and current takes none at each
    # poll), and one under it (another trainer may have published meanwhile); _publish reads none.
    assert len(pointer_reads) == 2, pointer_reads
