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
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import lora_weights, model_folder, one_series, record, served, trainer_on


def _cut_short(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _mistyped(data: bytes) -> bytes:
    return json.dumps({**json.loads(data), "steps": "ten"}).encode()


def _non_finite_loss(data: bytes) -> bytes:
    """NaN, which json.loads takes and an ``adapter.published`` event refuses (JSON has none)."""
    return json.dumps({**json.loads(data), "final_loss": float("nan")}).encode()


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("result.json", _cut_short),
        ("result.json", lambda data: b"[]"),
        ("result.json", _mistyped),
        ("result.json", _non_finite_loss),
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
    [warning] = [r for r in caplog.records if getattr(r, "key", None) == key and r.levelno >= logging.WARNING]
    assert "trained again" in warning.getMessage()


def _weights_key(store: FileStore, adapter_id: str) -> str:
    return f"{adapter_id}/{AdapterRegistry(store).get(adapter_id).weight_name}"


@pytest.mark.parametrize("lost", [True, False])
def test_a_roll_back_whose_registry_weights_are_lost_or_altered_is_reported_and_the_others_train(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture, lost: bool
) -> None:
    """A roll-back to an adapter whose ``jobs/`` folder has expired reads its weights from the registry:
    missing there, or failing their checksum, they raised at every poll, for ever, seen only as
    ``retried``, with nothing naming the file or saying what to do."""
    store, trainer = one_series(tmp_path)

    [first] = trainer(4).run_pending()
    weights_key = _weights_key(store, first.adapter_id)
    [second] = trainer(8).run_pending()
    for key in [*store.list_keys(f"{PREFIX}/jobs/"), *store.list_keys(f"{PREFIX}/sets/")]:
        store.delete(key)  # expired, as docs/ops.md allows once published
    if lost:
        store.delete(weights_key)
    else:
        weights = store.get_bytes(weights_key)
        store.put_bytes(weights_key, weights[:-1] + bytes([weights[-1] ^ 1]))  # one bit flipped
    record(store, captioned_sku(store, 2, usable_photos=1, series="fanta"))
    rolled_back = trainer(4)  # the series "cola" is rolled back to its first adapter

    with caplog.at_level(logging.ERROR, logger="skuforge.lora-trainer"):
        rolled_back.poll()
        rolled_back.poll()

    assert rolled_back.last_error is None and rolled_back.metrics.jobs.labels("retried")._value.get() == 0
    assert served(store, "fanta") is not None and served(store) == second.adapter_id
    errors = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.ERROR]
    assert [error.key for error in errors] == [store.uri_for(weights_key)] * 2  # type: ignore[attr-defined]
    assert "delete its published marker" in errors[0].getMessage()
    # Worded by cause: it said "a record of its publication cannot be read" for lost weights too.
    cause = "lost" if lost else "do not match their sha256"
    assert errors[0].getMessage().startswith(f"adapter left out: its weights in the registry {cause}; ")
    assert rolled_back.metrics.unreadable.labels("published")._value.get() == 1

    store.delete(f"{PREFIX}/published/{first.adapter_id}.json")  # what the log says to do
    rolled_back.run_pending()
    assert rolled_back.metrics.unreadable.labels("published")._value.get() == 0
    assert served(store) == first.adapter_id


def test_a_deleted_current_pointer_is_rebuilt_from_the_generators_choice_and_the_roll_back_happens(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """Deleting a damaged ``current/`` pointer, as the error offered, made the trainer take the series'
    training set now as current: a real roll-back was missed, and the generator kept serving the later
    adapter, trained on SKUs that have left the series."""
    store, trainer = one_series(tmp_path)

    [first] = trainer(4).run_pending()
    [second] = trainer(8).run_pending()
    assert served(store) == second.adapter_id
    [pointer] = store.list_keys(f"{PREFIX}/current/")
    store.delete(pointer)  # cut short, then deleted as the error message offered

    [again] = trainer(4).run_pending()  # the series is rolled back to its first adapter

    assert (again.adapter_id, again.publication) == (first.adapter_id, 2)
    assert served(store) == first.adapter_id and len(stub_training) == 2  # not trained again
    assert json.loads(store.get_bytes(pointer)) == {"adapter_id": first.adapter_id}
    assert trainer(4).run_pending() == []


def test_a_deleted_current_pointer_leaves_an_adapter_an_operator_registered_served(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """The rebuilt pointer names only an adapter the trainer published: one an operator registered by
    hand for the series stays served, as it does while the pointer is intact."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)
    [published] = trainer.run_pending()
    AdapterRegistry(store).register(
        "cola-by-hand", lora_weights(), kind="specialized", base_model="sd15-inpaint", series="cola"
    )
    [pointer] = store.list_keys(f"{PREFIX}/current/")
    store.delete(pointer)

    assert trainer.run_pending() == []
    assert served(store) == "cola-by-hand"
    assert json.loads(store.get_bytes(pointer)) == {"adapter_id": published.adapter_id}


@pytest.mark.parametrize("lost", [True, False])
def test_a_publish_retried_after_the_registry_copy_was_damaged_registers_the_job_s_weights_again(
    tmp_path: Path, stub_training: list[Path], monkeypatch: pytest.MonkeyPatch, lost: bool
) -> None:
    """A publish retried (the broker away) found the adapter already the newest in the registry and
    published it as it was, unchecked: weights lost or altered there since then failed in the generator."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)

    def broker_away(event: AdapterPublished) -> None:
        raise TransientError("broker away")

    trainer.publish = broker_away
    trainer.poll()  # trained and registered, not published
    adapter_id = served(store)
    assert adapter_id is not None
    weights_key = _weights_key(store, adapter_id)
    weights = store.get_bytes(weights_key)
    if lost:
        store.delete(weights_key)
    else:
        store.put_bytes(weights_key, weights[:-1] + bytes([weights[-1] ^ 1]))  # one bit flipped
    published: list[AdapterPublished] = []
    trainer.publish = published.append
    trainer.poll()  # the poll after a failed send skips its try (PublicationBackoff)
    assert published == []

    trainer.poll()

    [event] = published
    assert event.adapter_id == adapter_id and trainer.last_error is None
    metadata = AdapterRegistry(store).get(adapter_id)
    # What the generator reads: the weights the registry names, checked against the event's sha256.
    assert metadata.weights_sha256 == event.weights_sha256
    assert store.read_checked(f"{adapter_id}/{metadata.weight_name}", event.weights_sha256) == weights
