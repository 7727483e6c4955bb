"""The LoRA trainer, fifth review: its own state files damaged, and publications retried.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.lora_trainer.stage import GENERAL_STATE_KEY
from shared.store import FileStore
from tests.test_generator_stage import captioned_sku
from tests.test_lora_review import (
    gate_accepted,
    model_folder,
    record,
    record_accepted_event,
    stub_training,
    trainer_on,
)

__all__ = ["stub_training"]  # the fixture, imported for the tests below


@pytest.mark.parametrize(
    "damaged",
    [
        b'{"accepted_count": 3, "trai',  # cut short
        b"not json",
        b"[]",
        b'{"accepted_count": "3", "trained_at": 0}',
        b'{"accepted_count": 0, "trained_at": null}',
        b'{"in_flight": {"keys": ["lora-trainer/accepted/x.json"], "accepted_count": "x"}}',
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
    [error] = caplog.records
    assert error.key == GENERAL_STATE_KEY and "delete it" in error.getMessage()  # type: ignore[attr-defined]
    assert trainer.metrics.unreadable.labels("general")._value.get() == 1
    assert store.get_bytes(GENERAL_STATE_KEY) == damaged  # left for the operator to read or fix

    store.delete(GENERAL_STATE_KEY)  # what the log says to do
    [general] = trainer.run_pending()
    assert general.kind == "general"
    assert trainer.metrics.unreadable.labels("general")._value.get() == 0
