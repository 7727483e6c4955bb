"""The LoRA trainer, fourth review: roll-backs, removals and the files it trains from.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from schemas.events import AdapterPublished
from services.lora_trainer import stage as lora_stage
from services.lora_trainer.stage import PREFIX, LoraTrainer, PublicationFailed, kafka_publisher
from shared.config import Settings
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from tests.support.lora import (
    _class_images,
    gate_accepted,
    model_folder,
    one_series,
    record_accepted_event,
    served,
    trainer_on,
)


class _Broker:
    """Stands in for ``shared.bus.Publisher``: keeps each event id the trainer sends."""

    event_ids: list[str] = []

    def __init__(self, settings: Settings, producer_name: str) -> None:
        pass

    def publish(self, topic: Any, payload: AdapterPublished, *, sku_id: str, event_id: str) -> None:
        self.event_ids.append(event_id)


def test_a_roll_back_is_published_under_a_new_event_id_and_a_retried_one_under_the_same(
    tmp_path: Path, stub_training: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event id was the adapter's alone: a roll-back re-published the first publication's id, which
    a consumer de-duplicating by event id (every skuforge stage does) dropped as a redelivery."""
    monkeypatch.setattr(lora_stage, "Publisher", _Broker)
    monkeypatch.setattr(_Broker, "event_ids", [])
    _, trainer_at = one_series(tmp_path)
    to_kafka = kafka_publisher(Settings())
    ack_lost = {"once": False}

    def publish(event: AdapterPublished) -> None:
        to_kafka(event)
        if ack_lost["once"]:  # the broker has it, the trainer does not know: it publishes again
            ack_lost["once"] = False
            raise TimeoutError("no ack")

    def trainer(rank: int) -> LoraTrainer:
        trainer = trainer_at(rank)
        trainer.publish = publish
        return trainer

    trainer(4).run_pending()
    trainer(8).run_pending()
    ack_lost["once"] = True
    with pytest.raises(PublicationFailed, match="no ack"):
        trainer(4).run_pending()  # rolled back; the ack is lost
    [again] = trainer(4).run_pending()  # the same roll-back, published again

    first, second, roll_back, retried = _Broker.event_ids
    assert len({first, second, roll_back}) == 3  # the roll-back is news to every consumer
    assert retried == roll_back  # its retry is a duplicate they drop
    assert again.publication == 2


def test_a_roll_back_to_an_adapter_an_operator_removed_leaves_it_removed(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """`skuforge adapters remove` takes out an adapter that paints the wrong thing; a roll-back to its
    training set registered it again, and the generator served it once more."""
    store, trainer = one_series(tmp_path)
    registry = AdapterRegistry(store)

    [first] = trainer(4).run_pending()
    registry.remove(first.adapter_id)  # paints the wrong thing
    [second] = trainer(8).run_pending()

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        assert trainer(4).run_pending() == []  # rolled back to the removed adapter's set
    # Warnings only: an earlier test's configure_logging may leave the skuforge logger at INFO, and the
    # two runs above log "adapter published" with an adapter_id too.
    warned = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.adapter_id for record in warned] == [first.adapter_id]  # type: ignore[attr-defined]
    assert served(store) == second.adapter_id and len(stub_training) == 2
    assert [adapter.adapter_id for adapter in registry.list()] == [second.adapter_id]
    assert trainer(4).run_pending() == []  # and it stays so at the next polls


def test_an_accepted_request_with_a_mistyped_field_is_left_out_and_the_general_adapter_publishes(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Only ``class_noun``'s type was checked: a number for ``sku_id`` or ``item_id``, or a list for
    ``prompt``, got into the plan and failed the general job at every poll, though the docs promise
    such a file is logged and left out."""
    store = FileStore(tmp_path / "store")
    for variant in range(4):
        record_accepted_event(store, gate_accepted(store, variant))
    keys = sorted(store.list_keys(f"{PREFIX}/accepted/"))
    for key, field, value in zip(keys, ("sku_id", "item_id", "prompt"), (7, 7, ["a photo"]), strict=False):
        mistyped = json.loads(store.get_bytes(key))
        mistyped[field] = value
        store.put_json(key, mistyped)
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=4
    )

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        [event] = trainer.run_pending()

    assert event.kind == "general" and event.instance_images == 1 and event.sku_ids == ["SKU-001"]
    assert [record.key for record in caplog.records] == keys[:3]  # type: ignore[attr-defined]


def test_a_class_folder_with_fewer_images_than_the_recipe_asks_is_named_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder short of SKUFORGE_LORA_CLASS_IMAGES quietly trained its class on fewer prior images."""
    classes = tmp_path / "class-images"
    _class_images(classes, "can", 2)
    _class_images(classes, "bottle", 3)
    store = FileStore(tmp_path / "store")

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer = trainer_on(
            store, model_folder(tmp_path, "m"), lora_class_images_dir=str(classes), lora_class_images=3
        )

    assert len(trainer._class_folder.images["can"]) == 2  # trains on what it has
    [short] = caplog.records
    assert (short.folder, short.images, short.wanted) == (str(classes / "can"), 2, 3)  # type: ignore[attr-defined]
