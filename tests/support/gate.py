"""Events for gate and trainstore tests: matted items built from renderer photos with exact masks.

The "generated" image is the rendered photo itself (its pixels are the reference's, as the
composite backend keeps them), the expected and reference masks are the renderer's exact mask,
and the predicted mask is whatever the test asks for: exact (a good item), shifted, or empty.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from schemas.common import ImageRef, ObjectRef, SkuMetadata
from schemas.envelope import derive_id
from schemas.events import (
    CaptionedPhoto,
    CorrectionPending,
    CorrectionResolved,
    Decision,
    GateCheck,
    ImageGenerated,
    ImageMatted,
    SkuCaptioned,
    subject_sku_id,
)
from schemas.topics import IMAGE_MATTED, Topic
from services.gate.config import GateSettings
from services.gate.stage import GateMetrics, handle
from shared import keys
from shared.bus import make_envelope
from shared.config import Settings
from shared.observability import StageMetrics
from shared.runtime import Context, Emit
from shared.store import FileStore, ObjectStore
from shared.synth import make_product, render_photo

SIZE_PX = 96
SEED = 5


class ReadRecordingStore(FileStore):
    """A file store that remembers the uri of every object read from it (``read_verified``): what a
    stage read of an event before refusing it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read: list[str] = []

    def read_verified(self, ref: ObjectRef) -> bytes:
        self.read.append(ref.uri)
        return super().read_verified(ref)


def sku(sku_index: int) -> SkuMetadata:
    return SkuMetadata(sku_id=f"SKU-{sku_index:03d}", name=f"Product {sku_index}", category="soda can")


def shifted(mask: np.ndarray, dx: int) -> np.ndarray:
    """The mask moved ``dx`` pixels right (what falls off the edge is lost)."""
    out = np.zeros_like(mask)
    out[:, dx:] = mask[:, : mask.shape[1] - dx]
    return out


def matted_item(
    store: ObjectStore,
    sku_index: int,
    variant: int,
    *,
    predicted: str = "exact",
) -> ImageMatted:
    """A matted item of SKU ``sku_index``; ``predicted`` is 'exact', 'shifted' or 'empty'."""
    photo = render_photo(make_product(sku_index, SEED), variant, SEED, size_px=SIZE_PX)
    item_id = f"gen-{sku_index:03d}-{variant:02d}"
    sku_id = sku(sku_index).sku_id
    # Under the flow's keys, so the trainstore's check of an event's objects (other_sku_object) reads
    # them as it reads a producer's.
    image = store.put_image(keys.generated_key(sku_id, item_id), photo.image)
    mask = store.put_image(keys.expected_mask_key(sku_id, item_id), photo.mask)
    predicted_pixels = {
        "exact": photo.mask,
        "shifted": shifted(photo.mask, SIZE_PX // 4),
        "empty": np.zeros_like(photo.mask),
    }[predicted]
    generated = ImageGenerated(
        item_id=item_id,
        sku=sku(sku_index),
        reference_photo_id="p0",
        reference_image=image,
        reference_mask=mask,
        image=image,
        expected_mask=mask,
        backend="composite",
        model_id="renderer",
        adapter_id=None,
        prompt=f"a photo of sku{sku_index} soda can",
        seed=variant,
        variant_index=variant,
    )
    return ImageMatted(
        generated=generated,
        predicted_mask=store.put_image(keys.predicted_mask_key(sku_id, item_id), predicted_pixels),
        cutout=image,
        foreground_fraction=float(np.count_nonzero(predicted_pixels) / predicted_pixels.size),
        mean_confidence=0.9,
        matting_model_id="test",
    )


def captioned(store: ObjectStore, sku_index: int, photos: int = 2) -> SkuCaptioned:
    """The captioner's event for SKU ``sku_index``: ``photos`` usable real photos and one unusable."""
    spec = make_product(sku_index, SEED)
    sku_id = sku(sku_index).sku_id
    entries = []
    for index in range(photos):
        photo = render_photo(spec, 100 + index, SEED, size_px=SIZE_PX)
        entries.append(
            CaptionedPhoto(
                photo_id=f"p{index}",
                image=store.put_image(keys.photo_key(sku_id, f"p{index}"), photo.image),
                mask=store.put_image(keys.reference_mask_key(sku_id, f"p{index}"), photo.mask),
                usable=True,
                caption=f"a red can, photo {index}",
            )
        )
    blurry = store.put_image(keys.photo_key(sku_id, "p-blurry"), np.zeros((SIZE_PX, SIZE_PX, 3), np.uint8))
    entries.append(
        CaptionedPhoto(photo_id="p-blurry", image=blurry, usable=False, unusable_reason="no product found")
    )
    return captioning_of(sku_index, entries)


def captioning_of(sku_index: int, photos: list[CaptionedPhoto]) -> SkuCaptioned:
    """The ``sku.captioned`` of SKU ``sku_index`` with ``photos`` (a can, instance token ``sks``)."""
    return SkuCaptioned(
        sku=sku(sku_index),
        photos=photos,
        instance_token="sks",
        class_noun="can",
        instance_prompt="a photo of sks can",
        class_prompt="a photo of a can",
        captioner="test",
    )


def pending_of(matted: ImageMatted) -> CorrectionPending:
    check = GateCheck(code="iou_below_threshold", passed=False, value=0.4, threshold=0.9)
    return CorrectionPending(matted=matted, iou=0.4, checks=[check], reasons=["iou_below_threshold"])


def resolved(
    store: ObjectStore, matted: ImageMatted, decision: Decision, *, final_mask: ImageRef | None = None
) -> CorrectionResolved:
    """A reviewer's decision; an approval uses the expected mask as the human's mask unless given one."""
    if decision != "reject" and final_mask is None:
        final_mask = matted.generated.expected_mask
    return CorrectionResolved(
        pending=pending_of(matted),
        decision=decision,
        final_mask=final_mask if decision != "reject" else None,
        reject_reason="not the product" if decision == "reject" else None,
        reviewer="alice",
        decided_at=datetime(2026, 11, 22, 8, 0, tzinfo=UTC),
    )


def sku_id_of(payload: BaseModel) -> str:
    """The SKU an event of any topic of the flow is about (the Kafka key)."""
    sku_id = subject_sku_id(payload)
    if sku_id is None:
        raise TypeError(f"no SKU known for {type(payload).__name__}")
    return sku_id


def produce_events(settings: Settings, topic: Topic[Any], payloads: Sequence[BaseModel]) -> list[str]:
    """Produce enveloped payloads keyed by their SKU; the same payload always gets the same event id."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    name = settings.topic_name(topic)
    event_ids = []
    for payload in payloads:
        sku_id = sku_id_of(payload)
        event_id = derive_id("test", name, payload.model_dump_json())
        envelope = make_envelope(
            topic, payload, event_id=event_id, sku_id=sku_id, trace_id=event_id, producer="test"
        )
        producer.send(name, key=sku_id.encode(), value=envelope.model_dump_json().encode())
        event_ids.append(event_id)
    producer.flush()
    producer.close()
    return event_ids


def run_gate(store: FileStore, matted: ImageMatted) -> list[Emit]:
    """Run the gate's handler on ``matted`` as the runtime does."""
    event = make_envelope(
        IMAGE_MATTED,
        matted,
        event_id="e" * 32,
        sku_id=matted.generated.sku.sku_id,
        trace_id="t" * 32,
        producer="test",
    )
    ctx = Context("gate", store, Settings(), StageMetrics("gate"), logging.getLogger("test"))
    ctx._handling = event
    return list(handle(event, ctx, gate=GateSettings(), metrics=GateMetrics(CollectorRegistry())))
