"""The LoRA trainer, review 32: a ValueError from inside torch, a general job equal to the published
one, class-image folders held in memory at start-up, and a roll-back to an adapter no longer
registered.

Training is stubbed where what is trained is not the point (``stub_training``).
"""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from services.lora_trainer.stage import JOB_MAX_ATTEMPTS, PREFIX, _read_class_folder
from shared.config import ConfigError
from shared.generation.adapters import METADATA_FILE
from shared.lora_training.dataset import slug
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    _class_images,
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


# --- a class-image folder --------------------------------------------------------------------------


def test_a_class_folder_is_not_held_in_memory_at_start_up(tmp_path: Path) -> None:
    """Start-up read the images a job uses (SKUFORGE_LORA_CLASS_IMAGES of each class, up to 2000) and
    kept them all at the training resolution for the process's life: 2000 at 2048 px is 25 GB a class.
    Only their digests (the job's identity) are kept; the pixels are read when a set is built."""
    classes = tmp_path / "class-images"
    _class_images(classes, "can", 40)
    resolution = 256
    tracemalloc.start()
    try:
        folder = _read_class_folder(str(classes), resolution, most=40, max_pixels=10**8, max_bytes=2**26)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    assert held < 3 * resolution * resolution * 3  # before: the pixels of all 40 images, 7.9 MB
    assert len(folder.digests["can"]) == 40 and len(folder.images["can"]) == 40
    assert folder.images["can"][39].shape == (resolution, resolution, 3)  # read when asked for


@pytest.mark.slow  # paints with the tiny model
def test_class_images_are_painted_one_at_a_time_not_all_held(tiny_model: Path, tmp_path: Path) -> None:
    """The painter returned the whole class's images in a list, held until the last was painted and
    written: SKUFORGE_LORA_CLASS_IMAGES=2000 at 2048 px is 25 GB. Each is handed on as it is painted."""
    trainer = trainer_on(FileStore(tmp_path / "store"), tiny_model, lora_class_images=1, lora_resolution=64)
    for _ in trainer._paint_class_images("a photo of a can", 1, 0, 64):
        pass  # loads the painter
    size, count = 96, 8
    held = 0
    tracemalloc.start()
    try:
        for image in trainer._paint_class_images("a photo of a can", count, 0, size):
            assert image.shape == (size, size, 3)
            held = max(held, tracemalloc.get_traced_memory()[0])
            del image
    finally:
        tracemalloc.stop()

    assert held < 4 * size * size * 3  # before: the last image and the 7 before it


def test_a_class_image_changed_since_start_up_stops_its_job_naming_it(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """The job's identity names the class images as start-up read them: one rewritten since is not
    trained on under it. The job stops naming the file (a setting's fault: retried, not failed), and a
    restarted trainer trains on the folder as it is."""
    store = FileStore(tmp_path / "store")
    captioned = captioned_sku(store, 1, usable_photos=1, series="cola")
    record(store, captioned)
    classes = tmp_path / "class-images"
    _class_images(classes, slug(captioned.class_noun), 2)
    settings: dict[str, Any] = {
        "lora_class_images_dir": str(classes), "lora_class_images": 2, "lora_resolution": 64,
        "lora_scenes_per_photo": 1,
    }  # fmt: skip
    trainer = trainer_on(store, model_folder(tmp_path, "m"), **settings)
    changed = sorted((classes / slug(captioned.class_noun)).iterdir())[1]
    Image.new("RGB", (120, 80), (0, 200, 0)).save(changed)

    with pytest.raises(ConfigError, match=f"{changed} changed since the trainer started"):
        trainer.run_pending()
    (job,) = trainer.plan()
    assert not store.exists(f"{PREFIX}/jobs/{job.sha256}/failed.json") and stub_training == []

    (event,) = trainer_on(store, model_folder(tmp_path, "m2"), **settings).run_pending()
    assert event.class_images == 2


def test_a_class_folder_changes_no_job_when_the_prior_loss_weight_is_0(tmp_path: Path) -> None:
    """With SKUFORGE_LORA_PRIOR_LOSS_WEIGHT 0 no class image is drawn (none is put in the set), yet the
    folder's images were in every job's identity: editing the folder retrained every series of its class
    on the same images."""
    store = FileStore(tmp_path / "store")
    captioned = captioned_sku(store, 1, usable_photos=1, series="cola")
    record(store, captioned)
    classes = tmp_path / "class-images"
    _class_images(classes, slug(captioned.class_noun), 2)
    model = model_folder(tmp_path, "m")

    def job_hash() -> str:
        trainer = trainer_on(
            store, model, lora_class_images_dir=str(classes), lora_class_images=2, lora_prior_loss_weight=0.0
        )
        (job,) = trainer.plan()
        return job.sha256

    first = job_hash()
    Image.new("RGB", (120, 80), (0, 200, 0)).save(sorted((classes / slug(captioned.class_noun)).iterdir())[0])
    assert job_hash() == first


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
