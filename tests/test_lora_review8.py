"""The LoRA trainer, eighth review: a store fault half-way through recording a publication.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

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
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import model_folder, record, served, trainer_on


class _MarkerWriteFails(FileStore):
    """A store whose next write of a ``published/`` marker fails, as S3 away for a moment does."""

    fail_next_marker = False

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if self.fail_next_marker and key.startswith(f"{PREFIX}/published/"):
            self.fail_next_marker = False
            raise TransientError(f"cannot write {key}: the store is away")
        super()._write(key, data, content_type)


@pytest.mark.parametrize("polled_between", [True, False])
def test_a_roll_back_whose_marker_was_not_written_is_counted_and_the_next_roll_back_gets_a_new_id(
    tmp_path: Path, stub_training: list[Path], polled_between: bool
) -> None:
    """The series' current pointer is written before the published marker: the store away between
    the two left the pointer naming the rolled-back adapter and its marker one publication behind.
    The next polls found the adapter current and did nothing, and the next roll-back to it was
    published under the count (so the event id) of the one before, which consumers drop. Also when
    the series moved on at once (``polled_between`` False), with no poll of the cut-short one."""
    store = _MarkerWriteFails(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    events: list[AdapterPublished] = []

    def trainer(rank: int) -> LoraTrainer:
        trainer = trainer_on(store, model, lora_rank=rank, lora_class_images=0)
        trainer.publish = events.append
        return trainer

    [first] = trainer(4).run_pending()
    trainer(8).run_pending()
    store.fail_next_marker = True
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
