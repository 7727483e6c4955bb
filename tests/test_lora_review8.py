"""The LoRA trainer, eighth review: a store fault half-way through recording a publication (a
series' roll-back, the general adapter's first publication).

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.events import AdapterPublished
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import PREFIX, LoraTrainer, LoraTrainerMetrics, open_trainer
from shared.config import ConfigError, load_settings
from shared.errors import TransientError
from shared.generation.adapters import AdapterRegistry, resolve_adapter
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    gate_accepted,
    model_folder,
    record,
    record_accepted_event,
    served,
    trainer_on,
)
from tests.support.store import WriteFailsOnce


@pytest.mark.parametrize("polled_between", [True, False])
def test_a_roll_back_whose_marker_was_not_written_is_counted_and_the_next_roll_back_gets_a_new_id(
    tmp_path: Path, stub_training: list[Path], polled_between: bool
) -> None:
    """The series' current pointer is written before the published marker: the store away between
    the two left the pointer naming the rolled-back adapter and its marker one publication behind.
    The next polls found the adapter current and did nothing, and the next roll-back to it was
    published under the count (so the event id) of the one before, which consumers drop. Also when
    the series moved on at once (``polled_between`` False), with no poll of the cut-short one."""
    store = WriteFailsOnce(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    events: list[AdapterPublished] = []

    def trainer(rank: int) -> LoraTrainer:
        trainer = trainer_on(store, model, lora_rank=rank, lora_class_images=0)
        trainer.publish = events.append
        return trainer

    [first] = trainer(4).run_pending()
    trainer(8).run_pending()
    store.fail_next_write = f"{PREFIX}/published/"
    with pytest.raises(TransientError):
        trainer(4).run_pending()  # rolled back: published, its pointer written, its marker not
    assert served(store) == first.adapter_id
    if polled_between:
        assert trainer(4).run_pending() == []  # the next poll: nothing to publish again
    trainer(8).run_pending()  # rolled forward again
    trainer(4).run_pending()  # and back again

    publications = [event.publication for event in events if event.adapter_id == first.adapter_id]
    assert publications == [1, 2, 3]
    assert served(store) == first.adapter_id and len(stub_training) == 2


@pytest.mark.parametrize("cut_at", ["current/general.json", "published/", "general.json"])
def test_a_general_publication_the_store_cut_short_is_finished_by_the_next_poll(
    tmp_path: Path, stub_training: list[Path], cut_at: str
) -> None:
    """The general adapter's schedule (``general.json``) was written right after its event was sent,
    and its current pointer and published marker after that: the store away between them left the
    schedule counting the adapter's images and no general job under way, so no poll ever came back to
    write the pointer and the marker. Each write cut short is now finished at the next poll, with the
    same event (its id: consumers drop the copy), and nothing is trained again."""
    store = WriteFailsOnce(tmp_path / "store")
    for variant in range(2):
        record_accepted_event(store, gate_accepted(store, variant))
    model = model_folder(tmp_path, "m")
    events: list[AdapterPublished] = []

    def publish(event: AdapterPublished) -> None:
        if not events:  # the broker has the first; the store goes away
            store.fail_next_write = f"{PREFIX}/{cut_at}"
        events.append(event)

    def trainer() -> LoraTrainer:
        trainer = trainer_on(store, model, lora_class_images=0, lora_general_after_accepted=2)
        trainer.publish = publish
        return trainer

    with pytest.raises(TransientError):
        trainer().run_pending()
    [sent] = events
    trainer().run_pending()  # a restart: finished, the event sent again if its marker was not written
    assert all(event == sent for event in events)

    pointer = json.loads(store.get_bytes(f"{PREFIX}/current/general.json"))
    assert pointer == {"adapter_id": sent.adapter_id}
    registry = AdapterRegistry(store)
    assert registry.get(sent.adapter_id).kind == "general"  # the pointer names a registered adapter
    assert (
        resolve_adapter(registry.list(), series=None, base_model="sd15-inpaint").adapter_id == sent.adapter_id
    )
    marker = AdapterPublished.model_validate_json(
        store.get_bytes(f"{PREFIX}/published/{sent.adapter_id}.json")
    )
    assert marker == sent
    assert trainer().run_pending() == [] and trainer().plan() == []  # its images are counted
    assert len(stub_training) == 1


def test_a_poll_interval_a_thread_cannot_wait_is_refused_at_start_up() -> None:
    """SKUFORGE_LORA_POLL_S=1e10 passed "at least 0.5", and the worker's first wait between polls raised
    OverflowError (past threading.TIMEOUT_MAX): the worker thread died, and the stage never went ready."""
    assert threading.TIMEOUT_MAX < 1e10
    with pytest.raises(ConfigError, match="SKUFORGE_LORA_POLL_S"):
        load_settings(LoraTrainerSettings, lora_poll_s=1e10)
    assert load_settings(LoraTrainerSettings, lora_poll_s=3600).lora_poll_s == 3600


@pytest.mark.parametrize("uri", ["ftp://models.example/adapters", "s3://x/adapters"])
def test_an_adapter_registry_uri_no_store_opens_is_refused_at_start_up_naming_the_setting(
    tmp_path: Path, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SKUFORGE_DIFFUSION_ADAPTERS_URI with a scheme no store serves, or an S3 bucket name too short,
    ended the trainer's start-up in a ValueError traceback instead of the ConfigError line. The setting
    refuses it (as the generator does), before the trainer opens anything."""
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", str(model_folder(tmp_path, "sd15-inpaint")))
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", uri)
    with pytest.raises(ConfigError, match=r"SKUFORGE_DIFFUSION_ADAPTERS_URI: .*" + re.escape(repr(uri))):
        open_trainer(
            load_settings(store_uri=f"file://{tmp_path / 'store'}"),
            metrics=LoraTrainerMetrics(CollectorRegistry()),
            publish=lambda event: None,
            trainer=load_settings(LoraTrainerSettings, lora_device="cpu"),
        )
