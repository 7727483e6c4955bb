"""The LoRA trainer, review 33: a general job that failed for good is not planned again at every poll.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.lora_trainer import stage as lora_stage
from services.lora_trainer.stage import PREFIX
from shared.lora_training.train import TrainingError
from tests.support.lora import (
    CountingStore,
    gate_accepted,
    model_folder,
    record_accepted_event,
    request_reads,
    served,
    trainer_on,
)


def test_a_general_job_failed_for_good_is_not_planned_again_until_new_images_come(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """A general job marked failed (here every picked image has expired, docs/diffusion.md) left the
    schedule as it was: every poll planned it again, reading each of its request files (up to
    SKUFORGE_LORA_GENERAL_MAX_IMAGES, every SKUFORGE_LORA_POLL_S) only to find its failed.json."""
    store = CountingStore(tmp_path / "store")
    for variant in (0, 1, 2):
        accepted = gate_accepted(store, variant)
        record_accepted_event(store, accepted)
        store.delete(store.key_for(accepted.matted.generated.image.uri))  # expired (the lifecycle rule)
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )
    [job] = trainer.plan()
    request_reads(store)

    assert trainer.run_pending() == []
    failed = json.loads(store.get_bytes(f"{PREFIX}/jobs/{job.sha256}/failed.json"))
    assert failed["reason"].startswith("object_missing")
    assert len(request_reads(store)) == 3  # planned from its three request files
    assert trainer.metrics.jobs.labels("failed")._value.get() == 1

    for _ in range(2):  # the next polls
        assert trainer.plan() == [] and trainer.run_pending() == []
        assert request_reads(store) == []
    assert stub_training == []

    record_accepted_event(store, gate_accepted(store, 3))  # a new image: a new job
    [new] = trainer.plan()
    assert new.sha256 != job.sha256 and new.accepted_count == 4
    assert [event.adapter_id for event in trainer.run_pending()] == [new.adapter_id]
    assert served(store, "any") == new.adapter_id


def test_a_failed_general_job_whose_failed_file_is_deleted_is_tried_again(
    tmp_path: Path, stub_training: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting ``jobs/<hash>/failed.json`` is how an operator retries a failed job (docs/diffusion.md):
    remembering the failure must not hide that."""
    store = CountingStore(tmp_path / "store")
    for variant in (0, 1):
        record_accepted_event(store, gate_accepted(store, variant))
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )
    stubbed = lora_stage.train_lora

    def refusing(*args: object, **kwargs: object) -> object:
        raise TrainingError("cannot train as configured")

    monkeypatch.setattr(lora_stage, "train_lora", refusing)
    [job] = trainer.plan()
    assert trainer.run_pending() == []
    failed_key = f"{PREFIX}/jobs/{job.sha256}/failed.json"
    assert store.exists(failed_key)
    request_reads(store)
    assert trainer.plan() == [] and request_reads(store) == []

    monkeypatch.setattr(lora_stage, "train_lora", stubbed)  # the cause fixed
    store.delete(failed_key)
    [again] = trainer.plan()
    assert again.sha256 == job.sha256
    assert [event.adapter_id for event in trainer.run_pending()] == [job.adapter_id]
    assert served(store, "any") == job.adapter_id
