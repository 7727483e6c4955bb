"""The LoRA trainer plans every series it can read, whatever one request file holds.

Before, plan() read each request strictly: one file written by a newer trainer (an optional field,
then a rollback) or a damaged one raised, and no series trained again, at any poll.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from services.lora_trainer.stage import PREFIX, LoraTrainer
from shared.config import ConfigError
from shared.errors import TransientError
from shared.lora_training.dataset import slug
from shared.store import FileStore
from tests.support.lora import _class_images, _trainer, stand_in_captioned


def _unreadable(trainer: LoraTrainer, kind: str) -> float:
    """skuforge_lora_requests_unreadable{kind} as /metrics shows it."""
    (family,) = trainer.metrics.unreadable.collect()
    (value,) = [sample.value for sample in family.samples if sample.labels["kind"] == kind]
    return value


def test_a_request_written_by_a_newer_trainer_is_planned_like_the_others(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", stand_in_captioned(store, "SKU-1", "Cola"))
    newer = stand_in_captioned(store, "SKU-2", "Zest").model_dump(mode="json")
    newer["photos"][0]["ocr_text"] = "ZEST"  # a field this version does not know
    store.put_json(f"{PREFIX}/series/zest/SKU-2.json", newer)
    trainer = _trainer(store)

    jobs = trainer.plan()

    assert sorted(job.series or "" for job in jobs) == ["Cola", "Zest"]
    assert _unreadable(trainer, "captioned") == 0


@pytest.mark.parametrize(
    "damage",
    [b"{not json", b'{"sku": {"sku_id": "SKU-2"}}', b"[1, 2]"],
    ids=["not_json", "fields_missing", "not_an_object"],
)
def test_an_unreadable_series_request_is_skipped_and_counted_and_the_other_series_plan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: bytes
) -> None:
    store = FileStore(tmp_path)
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", stand_in_captioned(store, "SKU-1", "Cola"))
    store.put_bytes(f"{PREFIX}/series/zest/SKU-2.json", damage, content_type="application/json")
    trainer = _trainer(store)

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        jobs = trainer.plan()

    assert [job.series for job in jobs] == ["Cola"]
    assert _unreadable(trainer, "captioned") == 1
    assert [record.key for record in caplog.records] == [f"{PREFIX}/series/zest/SKU-2.json"]  # type: ignore[attr-defined]

    store.delete(f"{PREFIX}/series/zest/SKU-2.json")  # removed or rewritten: the next plan counts 0
    trainer.plan()
    assert _unreadable(trainer, "captioned") == 0


def _accepted(store: FileStore, item_id: str) -> dict[str, object]:
    ref = {"uri": store.uri_for(f"generated/{item_id}.png"), "sha256": "0" * 64, "bytes": 1}
    return {
        "sku_id": "SKU-1",
        "item_id": item_id,
        "image": ref,
        "mask": ref,
        "prompt": "a photo of shs can",
        "class_noun": "soda can",
    }


def test_an_unreadable_accepted_request_is_skipped_and_the_general_job_still_plans(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for item_id in ("item-1", "item-2"):
        store.put_json(f"{PREFIX}/accepted/{item_id}.json", _accepted(store, item_id))
    broken = _accepted(store, "item-3")
    del broken["image"]
    store.put_json(f"{PREFIX}/accepted/item-3.json", broken)
    trainer = _trainer(store, lora_general_after_accepted=3)

    (job,) = trainer.plan()

    assert job.kind == "general" and [source.photo_id for source in job.sources] == ["item-1", "item-2"]
    assert _unreadable(trainer, "accepted") == 1


class _UnreachableStore(FileStore):
    """A store whose reads fail the way an unreachable S3 does."""

    def _read(self, key: str) -> bytes:
        raise TransientError(f"cannot read {key}: the store is away")


def test_a_store_outage_while_planning_is_retried_not_skipped(tmp_path: Path) -> None:
    FileStore(tmp_path).put_json(f"{PREFIX}/series/cola/SKU-1.json", {"written": "before the outage"})
    trainer = _trainer(_UnreachableStore(tmp_path))

    with pytest.raises(TransientError):
        trainer.plan()
    assert _unreadable(trainer, "captioned") == 0


def test_a_store_outage_while_planning_is_logged_as_planning_not_as_a_failed_training_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store away while the requests were read (nothing trained, nothing begun) was logged "training
    job failed": the operator went looking at the GPU, the model and the photos. The log says the
    planning failed reading the store, that nothing was trained, and that the next poll tries again."""
    FileStore(tmp_path).put_json(f"{PREFIX}/series/cola/SKU-1.json", {"written": "before the outage"})
    trainer = _trainer(_UnreachableStore(tmp_path))

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()

    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    assert logged, "the failed planning was not logged"
    assert not [r for r in logged if "training job failed" in r.getMessage()]
    for entry in logged:
        message = entry.getMessage()
        assert "planning" in message and "reading the store" in message
        assert "nothing was trained" in message and "next poll" in message
        assert "the store is away" in getattr(entry, "reason", "")
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1
    assert isinstance(trainer.last_error, TransientError)


def test_the_general_adapter_trains_on_at_most_its_cap_spread_over_every_accepted_image(
    tmp_path: Path,
) -> None:
    """It trained on every accepted image ever recorded: each run copied them all into a new set and
    encoded them all on the GPU before its first step, so the job grew until it ran out of memory."""
    store = FileStore(tmp_path)
    for index in range(7):
        store.put_json(f"{PREFIX}/accepted/item-{index}.json", _accepted(store, f"item-{index}"))
    trainer = _trainer(store, lora_general_after_accepted=5, lora_general_max_images=3)

    (job,) = trainer.plan()

    assert [source.photo_id for source in job.sources] == ["item-0", "item-3", "item-6"]
    assert job.accepted_count == 7  # the next run counts new images from all of them


def test_the_general_schedule_starts_its_clock_at_the_first_accepted_image(tmp_path: Path) -> None:
    """With no state yet, "trained_at" was 0: the first accepted image made the schedule due, and one
    image trained the adapter every SKU without a series adapter gets."""
    store = FileStore(tmp_path)
    store.put_json(f"{PREFIX}/accepted/item-1.json", _accepted(store, "item-1"))
    trainer = _trainer(store, lora_general_after_accepted=100, lora_general_every_s=3600)

    assert trainer.plan() == []
    state = json.loads(store.get_bytes(f"{PREFIX}/general.json"))
    assert state["accepted_count"] == 0 and time.time() - state["trained_at"] < 60

    store.put_json(f"{PREFIX}/general.json", {"accepted_count": 0, "trained_at": time.time() - 3601})
    (job,) = trainer.plan()  # an hour on, the schedule is due with what came meanwhile
    assert job.kind == "general"


def test_a_poll_that_fails_is_counted_as_retried_not_as_a_failed_job(tmp_path: Path) -> None:
    """Every failed poll added one to outcome="failed": an hour of store outage at a 5 s poll read as
    720 failed jobs."""
    FileStore(tmp_path).put_json(f"{PREFIX}/series/cola/SKU-1.json", {"written": "before the outage"})
    trainer = _trainer(_UnreachableStore(tmp_path))
    registry = trainer.metrics.jobs

    trainer.poll()
    trainer.poll()

    samples = {
        s.labels["outcome"]: s.value
        for s in next(iter(registry.collect())).samples
        if s.name.endswith("_total")
    }
    assert samples == {"published": 0, "interrupted": 0, "failed": 0, "retried": 2}
    assert isinstance(trainer.last_error, TransientError)


def test_a_class_folder_changes_only_the_jobs_of_its_own_class(tmp_path: Path) -> None:
    """Every image of every class folder was in every job's identity: adding a folder for an unrelated
    class retrained every series adapter. Images are kept at the training resolution."""
    store = FileStore(tmp_path / "store")
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", stand_in_captioned(store, "SKU-1", "Cola"))
    classes = tmp_path / "class-images"
    _class_images(classes, "can", 3)

    def job_hash() -> str:
        trainer = _trainer(store, lora_class_images_dir=str(classes), lora_class_images=2, lora_resolution=64)
        assert {image.shape for images in trainer._class_folder.images.values() for image in images} == {
            (64, 64, 3)
        }
        (job,) = trainer.plan()
        return job.sha256

    first = job_hash()
    _class_images(classes, "bottle", 2)  # another class: this job does not use it
    assert job_hash() == first
    _class_images(classes, "can", 1, value=100)  # sorts after the first two: the recipe uses 2
    assert job_hash() == first
    (classes / "can" / "0-0.png").unlink()  # one of the images the job trains on
    assert job_hash() != first


def test_a_class_folder_that_is_no_slug_is_named_and_a_broken_image_stops_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path / "store")
    classes = tmp_path / "class-images"
    _class_images(classes, "Soda Can", 1)
    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer = _trainer(store, lora_class_images_dir=str(classes))
    assert trainer._class_folder.images == {}
    assert any(getattr(r, "expected_name", None) == "soda-can" for r in caplog.records)
    long_name = "organic extra virgin olive oil in a tin can"  # its slug is cut at 40 and ends in "-"
    _class_images(classes, slug(long_name), 1)
    assert list(_trainer(store, lora_class_images_dir=str(classes))._class_folder.images) == [slug(long_name)]
    (classes / "can").mkdir()
    (classes / "can" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ConfigError, match=r"can/broken\.png cannot be used"):
        _trainer(store, lora_class_images_dir=str(classes))
