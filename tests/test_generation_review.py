"""Generation-path faults an operator would hit, each pinned at the smallest level that shows it.

Start-up refuses generator settings that would send every SKU to the DLQ; one hand-edited
``metadata.json`` in the adapter registry cannot stop the adapter choice for every request; the
LoRA trainer gives each series its own adapter even when two series share a slug, and a job whose
photo has gone fails alone; the HTTP Triton client treats Triton dying mid-request as transient.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.generator.client import GeneratorUnavailable, TritonGenerator
from services.generator.protocol import VariantRequest
from services.generator.stage import build_stage as build_generator
from services.lora_trainer import stage as lora_stage
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import PREFIX, LoraTrainer, LoraTrainerMetrics
from shared.config import ConfigError, load_settings
from shared.generation.adapters import METADATA_FILE, AdapterRegistry, resolve_adapter
from shared.generation.settings import GenerationSettings
from shared.lora_training.dataset import slug
from shared.lora_training.train import TrainingResult
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import lora_weights

# --- generator settings ---------------------------------------------------------------------------


def test_a_diffusion_size_the_backend_refuses_fails_at_start_up() -> None:
    with pytest.raises(
        ConfigError, match=r"SKUFORGE_GENERATION_SIZE_PX: .*multiples of 8 px: use 496 or 504"
    ):
        load_settings(GenerationSettings, generation_backend="diffusion", generation_size_px=500)
    with pytest.raises(ConfigError, match="SKUFORGE_GENERATION_SIZE_PX"):
        load_settings(
            GenerationSettings,
            generation_backend_mix={"composite": 3, "diffusion": 1},
            generation_size_px=300,
        )
    # Compositing paints any size; a mix without diffusion too.
    assert load_settings(GenerationSettings, generation_size_px=500).generation_size_px == 500
    mix = load_settings(
        GenerationSettings,
        generation_backend="diffusion",
        generation_backend_mix={"composite": 1},
        generation_size_px=500,
    )
    assert mix.shares() == {"composite": 1.0}


def test_an_adapter_id_the_registry_cannot_hold_fails_at_start_up() -> None:
    with pytest.raises(ConfigError, match=r"SKUFORGE_GENERATION_ADAPTER_ID: .*not an adapter id"):
        load_settings(GenerationSettings, generation_adapter_id="../other-sku")
    assert (
        load_settings(GenerationSettings, generation_adapter_id="cola-330ml").generation_adapter_id
        == "cola-330ml"
    )
    assert load_settings(GenerationSettings, generation_adapter_id="None").generation_adapter_id == "None"


# --- adapter registry -----------------------------------------------------------------------------


def edit_metadata(root: Path, adapter_id: str, **changes: Any) -> None:
    path = root / adapter_id / METADATA_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_hand_written_naive_created_at_does_not_break_the_choice(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path))
    registry.register("shelf-general", lora_weights(), kind="general", base_model="sd15")
    registry.register("cola", lora_weights(), kind="specialized", series="cola", base_model="sd15")
    edit_metadata(tmp_path, "cola", created_at="2024-05-01T10:00:00")  # no time zone

    listed = registry.list()
    assert resolve_adapter(listed, series="cola").adapter_id == "cola"
    assert resolve_adapter(listed, series="pepsi").adapter_id == "shelf-general"


def test_a_weight_name_that_is_a_path_is_not_listed(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path))
    registry.register("shelf-general", lora_weights(), kind="general", base_model="sd15")
    registry.register("cola", lora_weights(), kind="specialized", series="cola", base_model="sd15")
    edit_metadata(tmp_path, "cola", weight_name="../shelf-general/pytorch_lora_weights.safetensors")

    listed = registry.list()
    assert [adapter.adapter_id for adapter in listed] == ["shelf-general"]
    # So every request gets an adapter whose weights can be fetched, none fails the whole batch.
    chosen = resolve_adapter(listed, series="cola").adapter
    assert chosen is not None
    directory = registry.fetch_weights(chosen, tmp_path / "cache")
    assert (directory / chosen.weight_name).is_file()


# --- LoRA trainer ---------------------------------------------------------------------------------


@pytest.fixture
def trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoraTrainer]:
    """A trainer on a file store whose training step is a stand-in (what is trained is not the point)."""

    def train_lora(*_: Any, **__: Any) -> TrainingResult:
        return TrainingResult(
            weights=lora_weights(), steps=1, final_loss=0.1, resumed_from_step=0, stopped_early=False
        )

    monkeypatch.setattr(lora_stage, "train_lora", train_lora)
    settings = load_settings(
        LoraTrainerSettings, lora_class_images=0, lora_scenes_per_photo=1, lora_resolution=64
    )
    yield LoraTrainer(
        store=FileStore(tmp_path / "store"),
        registry=AdapterRegistry(FileStore(tmp_path / "adapters")),
        registry_from="SKUFORGE_DIFFUSION_ADAPTERS_URI",
        settings=settings,
        model_dir=tmp_path,
        base_model="tiny",
        min_plain_background=0.7,
        publish=lambda event: None,
        metrics=LoraTrainerMetrics(CollectorRegistry()),
    )


def record_series(trainer: LoraTrainer, index: int, series: str) -> str:
    """What the stage's handler writes for a captioned SKU of ``series``; its sku_id."""
    captioned = captioned_sku(trainer.store, index, usable_photos=1, series=series)
    trainer.store.put_json(f"{PREFIX}/series/{slug(series)}/{captioned.sku.sku_id}.json", captioned)
    return captioned.sku.sku_id


def test_series_that_share_a_slug_get_their_own_adapters(trainer: LoraTrainer) -> None:
    coke = record_series(trainer, 1, "コカ・コーラ")
    pepsi = record_series(trainer, 2, "ペプシ")  # slug "x" too
    cola = record_series(trainer, 3, "Cola 330ml")
    cola_dash = record_series(trainer, 4, "cola-330ml")  # slug "cola-330ml" too

    jobs = {job.series: {source.sku_id for source in job.sources} for job in trainer.plan()}
    assert jobs == {
        "コカ・コーラ": {coke},
        "ペプシ": {pepsi},
        "Cola 330ml": {cola},
        "cola-330ml": {cola_dash},
    }
    published = trainer.run_pending()
    adapters = trainer.registry.list()
    assert len({event.adapter_id for event in published}) == 4
    # The generator gives a Pepsi SKU the adapter trained on Pepsi, not on Coca-Cola.
    choice = resolve_adapter(adapters, series="ペプシ").adapter
    assert choice is not None and choice.series == "ペプシ"
    assert next(e for e in published if e.adapter_id == choice.adapter_id).sku_ids == [pepsi]


def test_a_job_whose_photo_is_gone_fails_alone(trainer: LoraTrainer, tmp_path: Path) -> None:
    record_series(trainer, 1, "aaa")
    record_series(trainer, 2, "bbb")
    (broken,) = [job for job in trainer.plan() if job.series == "aaa"]
    (photo,) = broken.sources
    (tmp_path / "store" / trainer.store.key_for(photo.image_uri)).unlink()  # deleted since it was recorded

    published = trainer.run_pending()
    assert [event.series for event in published] == ["bbb"]
    failed = json.loads(trainer.store.get_bytes(f"{PREFIX}/jobs/{broken.sha256}/failed.json"))
    assert failed["reason"].startswith("object_missing") and photo.image_uri in failed["reason"]
    assert trainer.run_pending() == []  # not retried at every poll, nothing else held up


# --- the HTTP Triton client -----------------------------------------------------------------------


def silent_server(*, answer: bool) -> str:
    """host:port of a server that reads a request, then closes (``answer`` False) or hangs."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            connection, _ = listener.accept()
            connection.recv(1 << 16)
            if not answer:
                connection.close()  # what a Triton killed mid-request looks like to the client

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{listener.getsockname()[1]}"


def small_variant() -> VariantRequest:
    return VariantRequest(
        reference=np.zeros((8, 8, 3), np.uint8),
        mask=np.full((8, 8), 255, np.uint8),
        prompt="a photo of sks can",
        negative_prompt="",
        seed=1,
        parameters_json="{}",
        adapter_id=None,
        series=None,
        size=64,
    )


def test_triton_closing_the_http_connection_mid_request_is_transient() -> None:
    client = TritonGenerator(silent_server(answer=False), protocol="http", timeout_s=5.0, concurrency=1)
    try:
        with pytest.raises(GeneratorUnavailable, match="unreachable") as raised:
            client.generate("composite", [small_variant()])
    finally:
        client.close()
    assert raised.value.kind == "unavailable" and client.last_call_ok is False


def test_an_http_timeout_is_counted_as_a_timeout() -> None:
    client = TritonGenerator(silent_server(answer=True), protocol="http", timeout_s=0.5, concurrency=1)
    try:
        with pytest.raises(GeneratorUnavailable, match="timed out") as raised:
            client.generate("composite", [small_variant()])
    finally:
        client.close()
    assert raised.value.kind == "timeout"


# --- the generator's metrics ----------------------------------------------------------------------


def test_the_generator_reports_every_configured_model_at_zero_before_its_first_call(tmp_path: Path) -> None:
    """SkuforgeTritonRefusing divides refusals by calls: both must count from the first one after a
    restart, which a series born at 1 does not (rate() ignores its first sample)."""
    generation = load_settings(GenerationSettings, generation_backend_mix={"composite": 3, "diffusion": 1})
    client = TritonGenerator("127.0.0.1:1", concurrency=1)
    try:
        stage = build_generator(
            generation=generation,
            generator=client,
            settings=load_settings(store_uri=f"file://{tmp_path / 'store'}"),
        )
    finally:
        client.close()
    registry = stage.metrics.registry
    for model in ("skuforge_generator_composite", "skuforge_generator_diffusion"):
        calls = {"stage": "generator", "model": model}
        assert registry.get_sample_value("skuforge_model_seconds_count", calls) == 0.0, model
        refusals = {
            kind: registry.get_sample_value("skuforge_triton_errors_total", {"model": model, "kind": kind})
            for kind in ("overloaded", "timeout", "unavailable")
        }
        assert refusals == {"overloaded": 0.0, "timeout": 0.0, "unavailable": 0.0}, model


def test_a_cached_adapter_file_damaged_at_the_same_size_is_fetched_again(tmp_path: Path) -> None:
    """fetch_weights said "checked against its sha256" but trusted a cached copy by its size alone."""
    registry = AdapterRegistry(FileStore(tmp_path / "registry"))
    registry.register("cola", lora_weights(), kind="specialized", series="cola", base_model="sd15")
    (adapter,) = registry.list()
    directory = registry.fetch_weights(adapter, tmp_path / "cache")
    cached = directory / adapter.weight_name
    good = cached.read_bytes()
    cached.write_bytes(bytes(len(good)))  # same size, other bytes
    assert registry.fetch_weights(adapter, tmp_path / "cache") == directory
    assert cached.read_bytes() == good
