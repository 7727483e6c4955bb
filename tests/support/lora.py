"""The LoRA trainer's tests' arrangements: a model folder, a trainer on a store, events recorded through
the stage's real handlers, a SKU photographed only in a store (``on_the_shelf``), and training stubbed
(``stub_training``, a fixture of the whole suite) where what is trained is not the point, so those tests
run on CPU in seconds; ``refused_publication``, one SKU's trainer publishing to a topic that refuses
every record (``refusing_publisher``: the publisher alone); ``tiny_model``, a tiny SD inpainting
pipeline built from config once per test module that asks for it (a fixture of the whole suite)."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from PIL import Image
from prometheus_client import CollectorRegistry

from bench.tiny_diffusion import build_tiny_inpaint_pipeline, product_photo
from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import derive_id
from schemas.events import CaptionedPhoto, GateAccepted, GateCheck, SkuCaptioned
from schemas.topics import ADAPTER_PUBLISHED, GATE_ACCEPTED, SKU_CAPTIONED
from services.lora_trainer import stage as lora_stage
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import (
    AdapterPublisher,
    Job,
    LoraTrainer,
    LoraTrainerMetrics,
    kafka_publisher,
    open_trainer,
    record_accepted,
    record_captioned,
)
from shared.bus import make_envelope
from shared.config import Settings, load_settings
from shared.generation.adapters import AdapterRegistry, resolve_adapter
from shared.generation.diffusion import DiffusionSettings
from shared.images import encode_png
from shared.lora_training.dataset import InstanceSource
from shared.lora_training.train import TrainingResult
from shared.observability import StageMetrics
from shared.runtime import Context, Emit
from shared.store import FileStore, ObjectStore, sha256_hex
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.captioning import captioned_sku
from tests.support.kafka import session_admin

# The side of the in-store photos ``on_the_shelf`` makes.
SHELF_PHOTO_PX = 160


def shelf_disc(radius_px: int, centre: tuple[int, int]) -> np.ndarray:
    """Where a disc of ``radius_px`` at ``centre`` (row, column) lies in an in-store photo."""
    rows, cols = np.mgrid[:SHELF_PHOTO_PX, :SHELF_PHOTO_PX]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius_px**2


def on_the_shelf(store: ObjectStore, blobs_by_photo: list[np.ndarray]) -> SkuCaptioned:
    """A SKU whose every photo is in a store (plain_background 0.2, below the generator's 0.7), each
    photo's mask the given blobs, the products red on a grey shelf."""
    captioned = captioned_sku(store, 1, usable_photos=len(blobs_by_photo), series="apples")
    photos = []
    for photo, blobs in zip(captioned.photos, blobs_by_photo, strict=True):
        pixels = np.full((SHELF_PHOTO_PX, SHELF_PHOTO_PX, 3), 110, np.uint8)
        pixels[blobs] = (200, 30, 30)
        mask = np.where(blobs, np.uint8(255), np.uint8(0))
        image = store.put_image(f"images/shelf/{photo.photo_id}.png", pixels)
        mask_ref = store.put_image(f"masks/shelf/{photo.photo_id}.png", mask)
        photos.append(photo.model_copy(update={"image": image, "mask": mask_ref, "plain_background": 0.2}))
    return captioned.model_copy(update={"photos": photos})


def lora_weights(fill: int = 0, rank: int = 4) -> bytes:
    """The smallest safetensors file ``lora_rank`` reads as LoRA weights; ``fill`` tells versions apart."""
    header = json.dumps(
        {"unet.to_q.lora_A.weight": {"dtype": "F32", "shape": [rank, 8], "data_offsets": [0, rank * 32]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + bytes([fill]) * (rank * 32)


def model_folder(root: Path, name: str, *, unet_channels: int = 32, in_channels: int = 9) -> Path:
    """A pipeline folder as far as start-up and the job hash read it (no weights: nothing trains);
    ``in_channels`` 9 is an inpainting UNet's (latents, mask, masked-image latents)."""
    folder = root / name
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    (folder / "unet" / "config.json").write_text(
        json.dumps({"block_out_channels": [unet_channels], "in_channels": in_channels})
    )
    return folder


def trainer_on(store: FileStore, model_dir: Path, **overrides: Any) -> LoraTrainer:
    return LoraTrainer(
        store=store,
        registry=AdapterRegistry(store),
        registry_from="SKUFORGE_STORE_URI",
        settings=load_settings(LoraTrainerSettings, **overrides),
        model_dir=model_dir,
        base_model="sd15-inpaint",
        min_plain_background=0.7,
        publish=lambda event: None,
        metrics=LoraTrainerMetrics(CollectorRegistry()),
    )


def cola_trainer(store: FileStore, registry_store: ObjectStore, tmp_path: Path) -> LoraTrainer:
    """A trainer of the series "cola" (SKU-001, one photo) on ``store``, registering into
    ``registry_store``."""
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    return LoraTrainer(
        store=store,
        registry=AdapterRegistry(registry_store),
        registry_from="SKUFORGE_DIFFUSION_ADAPTERS_URI",
        settings=load_settings(LoraTrainerSettings, lora_class_images=0),
        model_dir=model_folder(tmp_path, "m"),
        base_model="sd15-inpaint",
        min_plain_background=0.7,
        publish=lambda event: None,
        metrics=LoraTrainerMetrics(CollectorRegistry()),
    )


def _trainer(store: FileStore, **overrides: object) -> LoraTrainer:
    """A trainer on ``store`` whose model folder is the store's root (plans only: nothing trains)."""
    return LoraTrainer(
        store=store,
        registry=AdapterRegistry(store),
        registry_from="SKUFORGE_STORE_URI",
        settings=load_settings(LoraTrainerSettings, **overrides),
        model_dir=store.root,
        base_model="sd15-test",
        min_plain_background=0.7,
        publish=lambda event: None,
        metrics=LoraTrainerMetrics(CollectorRegistry()),
    )


def stand_in_captioned(store: FileStore, sku_id: str, series: str, *, photo_key: str = "") -> SkuCaptioned:
    """A ``sku.captioned`` of one usable photo (its image and mask one stand-in object, at ``photo_key``,
    by default ``incoming/<sku_id>.png``), as the trainer stores it as a series request."""
    ref = ImageRef(
        uri=store.uri_for(photo_key or f"incoming/{sku_id}.png"), sha256="0" * 64, bytes=1, width=1, height=1
    )
    return SkuCaptioned(
        sku=SkuMetadata(sku_id=sku_id, name="n", category="soda can", series=series),
        photos=[CaptionedPhoto(photo_id="p", image=ref, mask=ref, usable=True)],
        instance_token="shs",
        class_noun="can",
        instance_prompt="a photo of shs can",
        class_prompt="a photo of a can",
        captioner="test",
    )


def one_photo_source(store: FileStore) -> InstanceSource:
    """One product photo and its mask in ``store``, as a series request records them (the training
    loop's tests train the tiny model on it)."""
    photo, mask = product_photo(96)
    image_png, mask_png = encode_png(photo), encode_png(mask)
    store.put_bytes("photo.png", image_png)
    store.put_bytes("mask.png", mask_png)
    return InstanceSource(
        sku_id="SKU-001",
        photo_id="p1",
        image_uri=store.uri_for("photo.png"),
        image_sha256=sha256_hex(image_png),
        mask_uri=store.uri_for("mask.png"),
        mask_sha256=sha256_hex(mask_png),
        instance_prompt="a photo of sks soda can",
        class_noun="soda can",
        class_prompt="a photo of a soda can",
    )


def _class_images(root: Path, name: str, count: int, value: int = 0) -> None:
    """``count`` class images of the class ``name`` under ``root``, told apart by ``value``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (120, 80), (value + index, 0, 0)).save(folder / f"{value}-{index}.png")


def record(store: ObjectStore, captioned: SkuCaptioned) -> None:
    """What the stage's handler does with a ``sku.captioned`` event, through the real handler."""
    ctx = Context("lora-trainer", store, Settings(), StageMetrics("lora-trainer"), logging.getLogger("test"))
    event = make_envelope(
        SKU_CAPTIONED,
        captioned,
        event_id=derive_id("test", captioned.sku.sku_id, captioned.sku.series),
        sku_id=captioned.sku.sku_id,
        trace_id="t",
        producer="test",
    )
    ctx._handling = event
    record_captioned(event, ctx, metrics=LoraTrainerMetrics(CollectorRegistry()))


def gate_accepted(store: ObjectStore, variant: int) -> GateAccepted:
    """Variant ``variant`` of SKU-001 as the gate accepts it (its image and mask in ``store``)."""
    from tests.support.gate import matted_item

    check = GateCheck(code="iou_below_threshold", passed=True, value=1.0, threshold=0.9)
    return GateAccepted(matted=matted_item(store, 1, variant), iou=1.0, checks=[check])


def record_accepted_event(store: ObjectStore, accepted: GateAccepted) -> list[Emit]:
    """What the stage's handler does with a ``gate.accepted`` event, through the real handler."""
    ctx = Context("lora-trainer", store, Settings(), StageMetrics("lora-trainer"), logging.getLogger("test"))
    item_id = accepted.matted.generated.item_id
    event = make_envelope(
        GATE_ACCEPTED,
        accepted,
        event_id=derive_id("test", item_id),
        sku_id="SKU-001",
        trace_id="t",
        producer="t",
    )
    ctx._handling = event
    return record_accepted(event, ctx, metrics=LoraTrainerMetrics(CollectorRegistry()))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A tiny SD inpainting pipeline built from config (no weights downloaded), one per test module."""
    module = request.module.__name__.rpartition(".")[2]
    return build_tiny_inpaint_pipeline(tmp_path_factory.mktemp(module) / "tiny-sd-inpaint")


@pytest.fixture
def stub_training(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Training replaced by a stand-in that records the model folder it was asked to train."""
    trained_on: list[Path] = []

    def train_lora(model_dir: Path, *_: Any, **__: Any) -> TrainingResult:
        trained_on.append(model_dir)
        return TrainingResult(
            weights=lora_weights(), steps=1, final_loss=0.1, resumed_from_step=0, stopped_early=False
        )

    monkeypatch.setattr(lora_stage, "train_lora", train_lora)
    yield trained_on


def one_series(tmp_path: Path) -> tuple[FileStore, Callable[[int], LoraTrainer]]:
    """A store holding SKU-001 of the series "cola" (one usable photo), and a trainer on it at a LoRA
    rank, with no class images: two ranks are two recipes of the series, so training the first again
    after the second rolls the series back to its first adapter."""
    store = FileStore(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))

    def trainer(rank: int) -> LoraTrainer:
        return trainer_on(store, model, lora_rank=rank, lora_class_images=0)

    return store, trainer


def served(store: ObjectStore, series: str = "cola") -> str | None:
    """The adapter the generator picks for ``series``."""
    return resolve_adapter(AdapterRegistry(store).list(), series=series, base_model="sd15-inpaint").adapter_id


class CountingStore(FileStore):
    """A file store that keeps the keys it was asked to read, and the prefixes it was asked to list, in
    order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []
        self.listed: list[str] = []

    def _read(self, key: str) -> bytes:
        self.reads.append(key)
        return super()._read(key)

    def _list(self, prefix: str) -> Iterator[str]:
        self.listed.append(prefix)
        return super()._list(prefix)


def request_reads(store: CountingStore) -> list[str]:
    """The ``accepted/`` request files read since the last look (a general plan reads its picks)."""
    reads = [key for key in store.reads if key.startswith(f"{lora_stage.PREFIX}/accepted/")]
    store.reads.clear()
    return reads


def generator_settings(model: Path, tmp_path: Path, **overrides: Any) -> DiffusionSettings:
    """The generator's diffusion settings on ``model`` (labelled sd15-inpaint), cached in ``tmp_path``."""
    return load_settings(
        DiffusionSettings,
        diffusion_model=str(model),
        diffusion_base_model="sd15-inpaint",
        diffusion_cache_dir=str(tmp_path / "cache"),
        diffusion_adapter_refresh_s=0,
        **overrides,
    )


def open_on(tmp_path: Path, trainer: LoraTrainerSettings, diffusion: DiffusionSettings) -> LoraTrainer:
    """The trainer ``open_trainer`` opens on a file store in ``tmp_path`` (a refusal raises)."""
    return open_trainer(
        load_settings(store_uri=f"file://{tmp_path / 'store'}"),
        metrics=LoraTrainerMetrics(CollectorRegistry()),
        publish=lambda event: None,
        trainer=trainer,
        diffusion=diffusion,
    )


# Far below one adapter.published envelope: the topic refuses every record (MessageSizeTooLargeError).
TOO_SMALL = "300"


class RefusedPublication(NamedTuple):
    """``refused_publication``'s arrangement: the store, the trainer, its one job, the topic, an admin."""

    store: FileStore
    trainer: LoraTrainer
    job: Job
    topic: str
    admin: KafkaAdminClient


def refusing_publisher(
    tmp_path: Path, kafka_bootstrap: str
) -> tuple[AdapterPublisher, str, KafkaAdminClient]:
    """The real ``kafka_publisher`` to an ``adapter.published`` topic made with max.message.bytes
    ``TOO_SMALL``; the topic's name, and an admin to raise its limit. The flush waits up to 30 s: the
    broker's refusal ends it at once, and within 5 s a loaded machine's broker could be slower to answer,
    the try then a timeout whose reason names no MessageSizeTooLarge."""
    shared = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"), flush_timeout_s=30.0)
    topic = shared.topic_name(ADAPTER_PUBLISHED)
    admin = session_admin(kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": TOO_SMALL})])
    admin.wait_for_topics([topic], timeout_ms=30_000)
    return kafka_publisher(shared), topic, admin


def refused_publication(tmp_path: Path, kafka_bootstrap: str) -> RefusedPublication:
    """A trainer on ``one_series`` publishing through ``refusing_publisher``, its one job planned."""
    store, trainer_at = one_series(tmp_path)
    trainer = trainer_at(4)
    trainer.publish, topic, admin = refusing_publisher(tmp_path, kafka_bootstrap)
    [job] = trainer.plan()
    return RefusedPublication(store, trainer, job, topic, admin)
