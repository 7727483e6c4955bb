"""The LoRA trainer, fifth review: its own state files damaged, and publications retried.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bench.tiny_diffusion import build_tiny_inpaint_pipeline
from schemas.events import AdapterPublished
from services.lora_trainer.stage import (
    GENERAL_STATE_KEY,
    JOB_MAX_ATTEMPTS,
    PREFIX,
    LoraTrainer,
    PublicationFailed,
)
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    gate_accepted,
    model_folder,
    one_series,
    record,
    record_accepted_event,
    served,
    trainer_on,
)


@pytest.mark.parametrize(
    "damaged",
    [
        b'{"accepted_count": 3, "trai',  # cut short
        b"not json",
        b"[]",
        b'{"accepted_count": "3", "trained_at": 0}',
        b'{"accepted_count": 0, "trained_at": null}',
        b'{"in_flight": {"keys": ["lora-trainer/accepted/x.json"], "accepted_count": "x"}}',
        b'{"accepted_count": 1, "trained_at": 0, "covered": [1]}',
        b'{"in_flight": {"keys": [], "accepted_count": 0, "covered": "lora-trainer/accepted/x.json"}}',
    ],
)
def test_a_damaged_general_schedule_leaves_the_general_adapter_out_and_the_series_train(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture, damaged: bytes
) -> None:
    """``general.json`` cut short, not JSON or mistyped raised out of plan(): every poll failed, and no
    series adapter trained, for a file of the general adapter's alone."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    record_accepted_event(store, gate_accepted(store, 0))
    store.put_bytes(GENERAL_STATE_KEY, damaged)
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )

    with caplog.at_level(logging.ERROR, logger="skuforge.lora-trainer"):
        published = trainer.run_pending()

    assert [event.kind for event in published] == ["specialized"]
    [error] = [record for record in caplog.records if record.levelno >= logging.ERROR]  # not start-up INFO
    assert error.key == GENERAL_STATE_KEY and "delete it" in error.getMessage()  # type: ignore[attr-defined]
    assert trainer.metrics.unreadable.labels("general")._value.get() == 1
    assert store.get_bytes(GENERAL_STATE_KEY) == damaged  # left for the operator to read or fix

    store.delete(GENERAL_STATE_KEY)  # what the log says to do
    [general] = trainer.run_pending()
    assert general.kind == "general"
    assert trainer.metrics.unreadable.labels("general")._value.get() == 0


def test_a_roll_back_retried_after_a_lost_ack_registers_the_adapter_once(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """A roll-back re-registers its adapter so it is the newest; the retry after a lost ack registered
    it a second time (weights and metadata written again, a new created_at) though it already was."""
    store, trainer_at = one_series(tmp_path)
    registry = AdapterRegistry(store)
    ack_lost = {"once": False}

    def publish(event: AdapterPublished) -> None:
        if ack_lost["once"]:  # the broker has it, the trainer does not know: it publishes again
            ack_lost["once"] = False
            raise TimeoutError("no ack")

    def trainer(rank: int) -> LoraTrainer:
        trainer = trainer_at(rank)
        trainer.publish = publish
        return trainer

    [first] = trainer(4).run_pending()
    trainer(8).run_pending()
    ack_lost["once"] = True
    with pytest.raises(PublicationFailed, match="no ack"):
        trainer(4).run_pending()  # rolled back; the ack is lost
    registered = registry.get(first.adapter_id)
    [again] = trainer(4).run_pending()

    assert again.publication == 2 and served(store) == first.adapter_id
    assert registry.get(first.adapter_id) == registered  # not registered a second time


def test_a_roll_back_to_an_adapter_whose_published_marker_was_deleted_makes_it_current(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """Without its ``published/`` marker (deleted, though docs/ops.md says to keep it) a rolled-back
    adapter was taken for a first publication: found registered, it was not registered again, and the
    generator kept serving the later adapter the trainer had just replaced."""
    store, trainer = one_series(tmp_path)

    [first] = trainer(4).run_pending()
    [second] = trainer(8).run_pending()
    store.delete(f"{PREFIX}/published/{first.adapter_id}.json")
    [again] = trainer(4).run_pending()  # rolled back

    assert again.adapter_id == first.adapter_id and len(stub_training) == 2  # not trained again
    assert served(store) == first.adapter_id != second.adapter_id


@pytest.mark.parametrize("gone", ["unet/config.json", "text_encoder"])
def test_a_model_folder_unreadable_for_a_moment_fails_no_job_for_good(tmp_path: Path, gone: str) -> None:
    """A model folder being copied again, or a mount away: its UNet config unreadable marked every job
    failed at once, and a missing file failed them after three polls (15 s). Their hashes hold the
    folder's fingerprint from start-up, so the folder back as it was left them failed for good."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    model = build_tiny_inpaint_pipeline(tmp_path / "tiny-sd-inpaint")
    trainer = trainer_on(
        store, model, lora_class_images=0, lora_max_steps=1, lora_resolution=64, lora_scenes_per_photo=1
    )
    (model / gone).rename(tmp_path / "away")

    for _ in range(JOB_MAX_ATTEMPTS + 1):
        trainer.poll()
    assert isinstance(trainer.last_error, OSError)  # retried, uncounted

    (tmp_path / "away").rename(model / gone)
    [event] = trainer.run_pending()
    assert event.series == "cola"
