"""The LoRA trainer, review 36: the adapter.published producer made before the worker is closed when the
worker cannot be opened; in-store photos train on their largest blob, as the generator cuts them; a
store or registry fault in a job is logged naming what failed, not as a training job that failed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.events import SkuCaptioned
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import (
    PREFIX,
    LoraTrainer,
    LoraTrainerMetrics,
    _instance_sources,
    build_stage,
    open_trainer,
)
from shared.arith.masks import largest_component
from shared.config import ConfigError, load_settings
from shared.errors import StoreMisconfigured, TransientError
from shared.generation import adapters as adapters_module
from shared.generation.adapters import AdapterRegistry
from shared.generation.diffusion import DiffusionSettings
from shared.images import decode_mask
from shared.lora_training.dataset import TrainingRecipe, build_training_set, training_set_sha256
from shared.store import FileStore, open_store
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.captioning import captioned_sku
from tests.support.lora import cola_trainer, lora_weights, model_folder, on_the_shelf, record, shelf_disc

RECIPE = TrainingRecipe(resolution=128, scenes_per_photo=3, class_images=0)


def producer_threads() -> set[threading.Thread]:
    """The live sender threads of the trainer's producers (kafka-python names them by client id)."""
    return {t for t in threading.enumerate() if t.name.startswith("skuforge-lora-trainer") and t.is_alive()}


@pytest.mark.kafka
def test_a_worker_that_cannot_open_closes_the_producer_made_for_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """build_stage made the adapter.published producer, then open_trainer refused the settings (here no
    model folder): the producer was left to the garbage collector or the exit hooks, and while the
    refusal was held (its traceback keeps build_stage's frame, a caller reporting it), its sender thread
    and broker connection stayed open. It is closed before the refusal is raised."""
    shared = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    before = producer_threads()
    with pytest.raises(ConfigError, match=r"model_index\.json") as refused:
        build_stage(
            settings=shared,
            trainer=load_settings(LoraTrainerSettings, lora_model=str(tmp_path / "no-model")),
            diffusion=load_settings(DiffusionSettings, diffusion_cache_dir=str(tmp_path / "cache")),
        )
    assert refused.traceback  # held, as a caller reporting it holds it
    assert producer_threads() - before == set()


def build(store: FileStore, captioned: SkuCaptioned) -> tuple[str, list[np.ndarray], list[str]]:
    """The SKU's set as the trainer builds it: its hash, each instance item's mask and item id."""
    sources = _instance_sources(captioned, 0.7)
    sha = training_set_sha256(
        kind="series", series="apples", base_model="m", model_digest="d", sources=sources, recipe=RECIPE
    )
    built = build_training_set(store, f"sets/{sha}", sha, sources, RECIPE)
    masks = [decode_mask(store.get_bytes(item.mask or "")) for item in built.instance_items]
    return sha, masks, [item.item_id for item in built.instance_items]


def test_an_in_store_photo_trains_on_its_largest_blob_as_the_generator_cuts_it(tmp_path: Path) -> None:
    """The generator cuts an in-store photo's largest blob (``cluttered_cutout``): the matting model's
    other blobs there are a neighbouring product or a price tag. The trainer composited the whole mask,
    so the SKU's adapter learned the apple with the price tag beside it on every scene."""
    store = FileStore(tmp_path / "store")
    apple_and_tag = shelf_disc(45, (80, 55))
    apple_and_tag[60:100, 125:150] = True  # a price tag, well clear of the apple
    captioned = on_the_shelf(store, [apple_and_tag])
    sha, masks, _ = build(store, captioned)

    assert masks and all(mask.any() for mask in masks)
    for mask in masks:
        assert np.array_equal(largest_component(mask), mask > 0), "a second blob was trained on"
    # Not the set trained before on whole masks: its hash names it, and its adapter is not this one.
    whole = [replace(source, cluttered=False) for source in _instance_sources(captioned, 0.7)]
    assert sha != training_set_sha256(
        kind="series", series="apples", base_model="m", model_digest="d", sources=whole, recipe=RECIPE
    )


def test_of_in_store_photos_only_those_of_one_object_are_trained_on_when_there_are_some(
    tmp_path: Path,
) -> None:
    """The generator draws from the in-store photos whose cut-out is one solid object when the SKU has
    any (``one_object_photos``); the trainer trained on a chain of apples as on a single one."""
    store = FileStore(tmp_path / "store")
    chain = shelf_disc(30, (80, 45)) | shelf_disc(30, (80, 95)) | shelf_disc(30, (80, 125))
    one_apple = shelf_disc(50, (80, 80))
    _, masks, item_ids = build(store, on_the_shelf(store, [chain, one_apple]))

    assert item_ids and all("-p1-" in item_id for item_id in item_ids), item_ids
    assert len(masks) == RECIPE.scenes_per_photo

    # With none of one object, every in-store photo is trained on (each its largest blob), as in the
    # generator.
    store = FileStore(tmp_path / "store-2")
    _, _, item_ids = build(store, on_the_shelf(store, [chain, chain | shelf_disc(8, (20, 20))]))
    assert {item_id.split("-")[-2] for item_id in item_ids} == {"p0", "p1"}


class RefusingJobWrites(FileStore):
    """A store that refuses every write under the jobs' folder, as a bucket whose policy denies them."""

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if key.startswith(f"{PREFIX}/jobs/"):
            raise StoreMisconfigured(f"refused {self.uri_for(key)}: AccessDenied (HTTP 403)")
        super()._write(key, data, content_type)


def store_failure_logged(
    trainer: LoraTrainer, caplog: pytest.LogCaptureFixture, where: str, uri: str
) -> None:
    """One poll logs the job's fault as ``where`` failing, with its uri, never as a failed training job."""
    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()
    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    assert logged, "the fault was not logged"
    assert not [r for r in logged if "training job failed" in r.getMessage()], [
        r.getMessage() for r in logged
    ]
    for entry in logged:
        assert where in entry.getMessage(), entry.getMessage()
        assert uri in getattr(entry, "reason", ""), getattr(entry, "reason", "")
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1
    assert trainer.metrics.jobs.labels("failed")._value.get() == 0
    assert isinstance(trainer.last_error, TransientError)


def test_a_registry_bucket_that_refuses_is_named_not_logged_as_a_failed_training_job(
    tmp_path: Path, stub_training: list[Path], s3_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Trained, then the adapter registry's S3 bucket refused it (here: no such bucket): logged "training
    job failed", twice, a user could not tell it from training that diverged. The log names the registry
    and its uri, and the job is retried."""
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:12]}"
    registry = open_store(f"s3://{bucket}/adapters", s3_endpoint_url=s3_endpoint, uri_from="the test")
    trainer = cola_trainer(FileStore(tmp_path / "store"), registry, tmp_path)

    store_failure_logged(trainer, caplog, "adapter registry", f"s3://{bucket}")
    assert len(stub_training) == 1  # trained; only its registration failed


def test_a_store_that_refuses_the_jobs_writes_is_named_not_logged_as_a_failed_training_job(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The object store refusing the trained weights was logged "training job failed" too."""
    store = RefusingJobWrites(tmp_path / "store")
    trainer = cola_trainer(store, FileStore(tmp_path / "registry"), tmp_path)

    store_failure_logged(trainer, caplog, "object store", f"{store.base_uri}/{PREFIX}/jobs/")


class RefusingWeights(FileStore):
    """A registry folder that refuses the adapters' weights, as a bucket whose policy denies them."""

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if key.endswith(".safetensors"):
            raise StoreMisconfigured(f"refused {self.uri_for(key)}: AccessDenied (HTTP 403)")
        super()._write(key, data, content_type)


def test_an_object_store_inside_the_registrys_folder_is_named_when_it_fails(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Which store failed was told by the registry's uri in the error's words: with the object store in a
    folder of the registry's (SKUFORGE_STORE_URI=s3://models/skuforge, the registry s3://models), every
    object-store fault named the registry, and its setting, as the one to fix."""
    store = RefusingJobWrites(tmp_path / "models" / "skuforge")
    trainer = cola_trainer(store, FileStore(tmp_path / "models"), tmp_path)

    store_failure_logged(trainer, caplog, "object store", f"{store.base_uri}/{PREFIX}/jobs/")


def test_a_registry_beside_the_object_store_is_named_when_it_fails(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The registry's own fault, in the same layout, is still the registry's."""
    store = FileStore(tmp_path / "models" / "skuforge")
    registry = RefusingWeights(tmp_path / "models")
    trainer = cola_trainer(store, registry, tmp_path)

    store_failure_logged(trainer, caplog, "adapter registry", f"{registry.base_uri}/")
    assert len(stub_training) == 1


@pytest.mark.parametrize("setting", ["SKUFORGE_STORE_URI", "SKUFORGE_DIFFUSION_ADAPTERS_URI"])
def test_a_registry_that_fails_is_named_by_the_setting_its_uri_came_from(
    setting: str, tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Every registry fault named SKUFORGE_DIFFUSION_ADAPTERS_URI, also where it was unset and the
    registry was ``<SKUFORGE_STORE_URI>/adapters``: the operator was sent to a setting they never set."""
    store = FileStore(tmp_path / "store")
    folder = tmp_path / "store" / "adapters" if setting == "SKUFORGE_STORE_URI" else tmp_path / "adapters"
    trainer = open_trainer(
        load_settings(store_uri=file_store_uri(store.root)),
        metrics=LoraTrainerMetrics(CollectorRegistry()),
        publish=lambda event: None,
        trainer=load_settings(LoraTrainerSettings, lora_device="cpu", lora_class_images=0),
        diffusion=load_settings(
            DiffusionSettings,
            diffusion_model=str(model_folder(tmp_path, "m")),
            diffusion_adapters_uri=None if setting == "SKUFORGE_STORE_URI" else file_store_uri(folder),
        ),
    )
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    # The registry's folder, as the settings opened it, refusing the weights (a bucket's policy).
    registry = RefusingWeights(folder)
    trainer.registry = AdapterRegistry(registry)

    store_failure_logged(trainer, caplog, f"adapter registry ({setting})", f"{registry.base_uri}/")


class TakenOverAtTheWeights(FileStore):
    """A registry folder on which a registration pauses, holding the lock, at its look at its weights
    past REGISTER_LOCK_STALE_S (made none): meanwhile another registration of the adapter (the CLI's)
    takes the lock over and registers it whole."""

    taken_over = False

    def _exists(self, key: str) -> bool:
        if key.endswith(".safetensors") and not self.taken_over:
            self.taken_over = True
            AdapterRegistry(FileStore(self.root)).register(
                key.split("/")[0], lora_weights(3), kind="specialized", series="cola", base_model="sd15"
            )
        return super()._exists(key)


def test_a_registration_taken_over_is_said_so_not_logged_as_the_registry_failing(
    tmp_path: Path,
    stub_training: list[Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another registration of the adapter took the trainer's registration lock over
    (``RegistrationTakenOver``): logged as "the adapter registry failed the job", it sent the operator to
    a store that was not at fault. The log says another registration took it over, and the next poll
    registers it again."""
    monkeypatch.setattr(adapters_module, "REGISTER_LOCK_STALE_S", 0.0)
    registry = TakenOverAtTheWeights(tmp_path / "registry")
    trainer = cola_trainer(FileStore(tmp_path / "store"), registry, tmp_path)

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()
    logged = [r.getMessage() for r in caplog.records if r.name == "skuforge.lora-trainer"]
    assert registry.taken_over and logged
    for message in logged:
        assert "another registration" in message and "failed" not in message, message
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1

    trainer.poll()  # registered again, not trained again
    (adapter,) = AdapterRegistry(registry).list()
    assert AdapterRegistry(registry).registered_weights(adapter) == lora_weights()
    assert trainer.metrics.jobs.labels("published")._value.get() == 1
    assert len(stub_training) == 1
