"""The LoRA trainer, seventh review: a trained job's own output, and a roll-back's registry copy, damaged.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from services.lora_trainer.stage import PREFIX
from shared.errors import TransientError
from shared.store import FileStore
from tests.test_generator_stage import captioned_sku
from tests.test_lora_review import model_folder, record, stub_training, trainer_on
from tests.test_lora_review6 import served

__all__ = ["stub_training"]  # the fixture, imported for the tests below


def _cut_short(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _mistyped(data: bytes) -> bytes:
    return json.dumps({**json.loads(data), "steps": "ten"}).encode()


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("result.json", _cut_short),
        ("result.json", lambda data: b"[]"),
        ("result.json", _mistyped),
        ("weights.safetensors", _cut_short),
        ("weights.safetensors", lambda data: None),
    ],
)
def test_a_trained_job_whose_output_is_damaged_is_trained_again_and_published(
    tmp_path: Path,
    stub_training: list[Path],
    caplog: pytest.LogCaptureFixture,
    file: str,
    damage: Callable[[bytes], bytes | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job trained but not yet registered (the registry away) whose ``result.json`` or weights were
    then damaged or lost raised at every poll, for ever: counted only as ``retried``, never published."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)
    [job] = trainer.plan()

    def registry_away(*args: object, **kwargs: object) -> None:
        raise TransientError("registry away")

    with monkeypatch.context() as away:
        away.setattr(trainer.registry, "register", registry_away)
        trainer.poll()  # trained, neither registered nor published
    key = f"{PREFIX}/jobs/{job.sha256}/{file}"
    damaged = damage(store.get_bytes(key))
    if damaged is None:
        store.delete(key)
    else:
        store.put_bytes(key, damaged)
    published: list[AdapterPublished] = []
    trainer.publish = published.append
    retried = trainer.metrics.jobs.labels("retried")._value.get()

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()

    assert trainer.last_error is None and trainer.metrics.jobs.labels("retried")._value.get() == retried
    assert [event.adapter_id for event in published] == [job.adapter_id] and published[0].steps == 1
    assert served(store) == job.adapter_id and len(stub_training) == 2  # trained again
    [warning] = [r for r in caplog.records if getattr(r, "key", None) == key]
    assert "trained again" in warning.getMessage()
