"""The LoRA trainer, review 46b: a failed publication's try is logged once, not twice.

Training is stubbed (``stub_training``); the publish callable stands in for a broker that is away.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from shared.errors import TransientError
from tests.support.captioning import captioned_sku
from tests.support.lora import CountingStore, model_folder, record, trainer_on


def test_a_failed_publication_try_is_logged_once(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Each try of an adapter's publication that the broker did not take was logged twice: a warning
    from the poll's jobs ("... the others go on") and an error from the poll itself, the same fault, the
    same adapter. The operator counted two failures per try. Now one line, an error, says it."""
    store = CountingStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)

    def away(event: AdapterPublished) -> None:
        raise TransientError("the broker is away")

    trainer.publish = away
    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()

    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    [line] = logged
    assert line.levelno == logging.ERROR
    assert "not sent" in line.getMessage() and "the broker did not take it" in line.getMessage()
    assert getattr(line, "adapter_id", None) == trainer.last_error.adapter_id  # type: ignore[union-attr]
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1
