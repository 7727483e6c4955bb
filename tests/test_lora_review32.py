"""The LoRA trainer, review 32: a ValueError from inside torch, a general job equal to the published
one, class-image folders held in memory, and a roll-back to an adapter no longer registered.

Training is stubbed where what is trained is not the point (``stub_training``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from services.lora_trainer.stage import JOB_MAX_ATTEMPTS, PREFIX
from shared.generation.adapters import METADATA_FILE
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
from tests.support.threads import one_torch_thread  # noqa: F401 (autouse: the tiny model trains on one thread)

# --- a ValueError from inside torch ---------------------------------------------------------------


@pytest.mark.slow  # trains the tiny model two steps, three times
def test_a_value_error_inside_a_training_step_is_retried_and_its_failure_names_the_step(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any ValueError failed the job for good at once, as if the job's inputs were refused, with the bare
    message as its reason ("Expected ... size"): one from torch in a step (a shape or dtype problem, a
    bug like any other) is tried again like any other fault, and the failure names the step, the
    error's type and its message."""
    import torch.nn.functional

    mse_loss = torch.nn.functional.mse_loss
    calls = 0

    def mse_loss_failing_at_each_second_step(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls % 2 == 0:  # no checkpoint before step 2: each attempt starts at step 1
            raise ValueError("Expected input batch_size (1) to match target batch_size (2).")
        return mse_loss(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "mse_loss", mse_loss_failing_at_each_second_step)
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(
        store, tiny_model, lora_class_images=0, lora_resolution=64, lora_scenes_per_photo=1,
        lora_max_steps=2, lora_checkpoint_every=100, lora_early_stop_patience=0,
    )  # fmt: skip
    (job,) = trainer.plan()
    job_prefix = f"{PREFIX}/jobs/{job.sha256}"

    for attempt in range(1, JOB_MAX_ATTEMPTS):
        with pytest.raises(ValueError, match="batch_size"):
            trainer.run_pending()
        assert not store.exists(f"{job_prefix}/failed.json")
        attempts = json.loads(store.get_bytes(f"{job_prefix}/attempts.json"))
        assert attempts["attempts"] == attempt and "training step 2 of 2" in attempts["last_reason"]
    assert trainer.run_pending() == []

    reason = json.loads(store.get_bytes(f"{job_prefix}/failed.json"))["reason"]
    assert reason.startswith(f"{JOB_MAX_ATTEMPTS} attempts failed, the last with ValueError: Expected input")
    assert "training step 2 of 2" in reason


# --- a general job that equals the published one --------------------------------------------------


def test_a_general_job_equal_to_the_published_one_is_not_planned_again_at_every_poll(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """With SKUFORGE_LORA_GENERAL_MAX_IMAGES below the accepted images, new ones may leave the spread
    the published adapter trained on unchanged: the job planned is the published one. It was not trained
    again, but the schedule never counted the new images as covered: every poll read every picked
    request file again (S3 reads every few seconds), for ever."""
    store = FileStore(tmp_path / "store")
    for variant in (0, 2, 4):
        record_accepted_event(store, gate_accepted(store, variant))
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1,
        lora_general_max_images=2,
    )  # fmt: skip
    [first] = trainer.run_pending()  # on the first and the last accepted image
    assert first.kind == "general" and trainer.plan() == []

    published = trainer.store.get_bytes(f"{PREFIX}/general.json")
    record_accepted_event(store, gate_accepted(store, 1))  # sorts between the first and the last
    [same] = trainer.plan()
    assert same.adapter_id == first.adapter_id  # the spread did not change
    assert trainer.run_pending() == [] and len(stub_training) == 1  # not trained again

    assert trainer.plan() == []  # the new image is covered: not planned again at the next poll
    state = json.loads(trainer.store.get_bytes(f"{PREFIX}/general.json"))
    assert state["trained_at"] == json.loads(published)["trained_at"]  # its clock is the last training's
    assert served(store, "any") == first.adapter_id


# --- a roll-back to an adapter no longer registered ------------------------------------------------


def test_a_roll_back_to_an_adapter_whose_metadata_names_another_is_reported_and_the_others_train(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A roll-back whose job folder has expired reads the adapter's metadata from the registry; one that
    names another adapter (a folder copied by hand: ``get`` says not registered, ``ObjectMissing``)
    raised out of the series' job at every poll, seen only as ``retried``, naming no file."""
    store, trainer = one_series(tmp_path)
    [first] = trainer(4).run_pending()
    [second] = trainer(8).run_pending()
    for key in [*store.list_keys(f"{PREFIX}/jobs/"), *store.list_keys(f"{PREFIX}/sets/")]:
        store.delete(key)  # expired, as docs/ops.md allows once published
    metadata_key = f"{first.adapter_id}/{METADATA_FILE}"
    copied = json.loads(store.get_bytes(f"{second.adapter_id}/{METADATA_FILE}"))
    store.put_json(metadata_key, copied)  # names the second adapter
    record(store, captioned_sku(store, 2, usable_photos=1, series="fanta"))
    rolled_back = trainer(4)  # the series "cola" is rolled back to its first adapter

    with caplog.at_level(logging.ERROR, logger="skuforge.lora-trainer"):
        rolled_back.poll()

    assert rolled_back.last_error is None and rolled_back.metrics.jobs.labels("retried")._value.get() == 0
    assert served(store, "fanta") is not None and served(store) == second.adapter_id
    [error] = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.ERROR]
    assert error.key == store.uri_for(metadata_key)  # type: ignore[attr-defined]
    assert "not registered" in error.getMessage() and "delete its published marker" in error.getMessage()
    assert rolled_back.metrics.unreadable.labels("published")._value.get() == 1

    store.delete(f"{PREFIX}/published/{first.adapter_id}.json")  # what the log says to do
    rolled_back.run_pending()
    assert served(store) == first.adapter_id
