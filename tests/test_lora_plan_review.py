"""The LoRA trainer plans every series it can read, whatever one request file holds.

Before, plan() read each request strictly: one file written by a newer trainer (an optional field,
then a rollback) or a damaged one raised, and no series trained again, at any poll.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.common import ImageRef, SkuMetadata
from schemas.events import CaptionedPhoto, SkuCaptioned
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import PREFIX, LoraTrainer, LoraTrainerMetrics
from shared.config import load_settings
from shared.errors import TransientError
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore


def _trainer(store: FileStore, **overrides: object) -> LoraTrainer:
    return LoraTrainer(
        store=store,
        registry=AdapterRegistry(store),
        settings=load_settings(LoraTrainerSettings, **overrides),
        model_dir=store.root,
        base_model="sd15-test",
        min_plain_background=0.7,
        publish=lambda event: None,
        metrics=LoraTrainerMetrics(CollectorRegistry()),
    )


def _captioned(store: FileStore, sku_id: str, series: str) -> SkuCaptioned:
    ref = ImageRef(uri=store.uri_for(f"incoming/{sku_id}.png"), sha256="0" * 64, bytes=1, width=1, height=1)
    return SkuCaptioned(
        sku=SkuMetadata(sku_id=sku_id, name="n", category="soda can", series=series),
        photos=[CaptionedPhoto(photo_id="p", image=ref, mask=ref, usable=True)],
        instance_token="shs",
        class_noun="can",
        instance_prompt="a photo of shs can",
        class_prompt="a photo of a can",
        captioner="test",
    )


def _unreadable(trainer: LoraTrainer, kind: str) -> float:
    """skuforge_lora_requests_unreadable{kind} as /metrics shows it."""
    (family,) = trainer.metrics.unreadable.collect()
    (value,) = [sample.value for sample in family.samples if sample.labels["kind"] == kind]
    return value


def test_a_request_written_by_a_newer_trainer_is_planned_like_the_others(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", _captioned(store, "SKU-1", "Cola"))
    newer = _captioned(store, "SKU-2", "Zest").model_dump(mode="json")
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
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", _captioned(store, "SKU-1", "Cola"))
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
