"""The LoRA trainer, review 45: a poll while a refused publication backs off reads nothing of its job
(it planned every job again, reading every request file, only to skip the send; the series' request
files are read, so that another series is not held back, review 46); a publication
reads its series' ``current/`` pointer once; a roll-back cut short that the pointer records is still
counted after another adapter's publication was refused.

Training is stubbed (``stub_training``); refused publications go to the real broker, through the real
``kafka_publisher`` (``refusing_publisher``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from services.lora_trainer.stage import PREFIX, PublicationFailed
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    CountingStore,
    gate_accepted,
    model_folder,
    one_series,
    record,
    record_accepted_event,
    refusing_publisher,
    trainer_on,
)


@pytest.mark.kafka
def test_a_poll_while_a_refused_publication_backs_off_reads_nothing_of_its_job(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """Before, each poll of the back-off (up to about 5 minutes of 5 s polls) listed the requests, read
    the general schedule, every request file the general job picked (up to
    SKUFORGE_LORA_GENERAL_MAX_IMAGES) and the job's result and weights, only to skip the send. Now the
    polls between tries read nothing of the waiting jobs (only the series' request files, planned); a
    try plans and reads as before."""
    store = CountingStore(tmp_path / "store")
    for variant in (0, 1, 2):
        record_accepted_event(store, gate_accepted(store, variant))
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )
    send, _, _ = refusing_publisher(tmp_path, kafka_bootstrap)
    sent_at: list[int] = []
    poll = 0

    def counted(event: AdapterPublished) -> None:
        sent_at.append(poll)
        send(event)

    trainer.publish = counted
    read_at: list[int] = []
    for poll in range(1, 8):
        store.reads.clear()
        store.listed.clear()
        trainer.poll()
        assert isinstance(trainer.last_error, PublicationFailed), trainer.last_error
        series = f"{PREFIX}/series/"
        if [key for key in store.reads if not key.startswith(series)] or set(store.listed) - {series}:
            read_at.append(poll)
    assert sorted(set(sent_at)) == [1, 3, 6]  # the series' and the general adapter's, at each try
    assert read_at == [1, 3, 6]
    assert len(stub_training) == 2  # trained once each


def test_a_publication_reads_its_series_pointer_once(tmp_path: Path, stub_training: list[Path]) -> None:
    """It was read before registering (to name the adapter unpublished) and again after the send (to
    count a roll-back cut short): the second read only found what the first had, plus this trainer's
    own write (one trainer publishes a series; docs/diffusion.md)."""
    store = CountingStore(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    [first] = trainer_on(store, model, lora_rank=4, lora_class_images=0).run_pending()
    store.reads.clear()

    [second] = trainer_on(store, model, lora_rank=8, lora_class_images=0).run_pending()

    assert second.adapter_id != first.adapter_id
    pointer_reads = [key for key in store.reads if key.startswith(f"{PREFIX}/current/")]
    assert len(pointer_reads) == 1, pointer_reads


@pytest.mark.kafka
def test_a_roll_back_cut_short_is_counted_after_another_adapters_publication_was_refused(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """A roll-back's pointer names its publication until its marker counts it. A new adapter of the
    series, registered before its event is sent, rewrote the pointer naming it unpublished, but wrote
    the publication under a field the trainer does not read (``under_way``): the count was lost, and
    the next roll-back to the adapter took the event id of the one cut short, which consumers drop."""
    store, trainer_at = one_series(tmp_path)
    [first] = trainer_at(4).run_pending()
    [pointer] = store.list_keys(f"{PREFIX}/current/")
    # A roll-back to `first` cut short: its event sent and its pointer written, the store away before
    # its marker counted it.
    store.put_json(pointer, {"adapter_id": first.adapter_id, "publication": 2})
    refused = trainer_at(8)
    refused.publish, _, _ = refusing_publisher(tmp_path, kafka_bootstrap)
    with pytest.raises(PublicationFailed, match="MessageSizeTooLarge"):
        refused.run_pending()

    [second] = trainer_at(8).run_pending()  # a restart, to a topic that takes the event

    marker = store.get_bytes(f"{PREFIX}/published/{first.adapter_id}.json")
    assert AdapterPublished.model_validate_json(marker).publication == 2
    assert second.adapter_id != first.adapter_id
