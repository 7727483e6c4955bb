"""How many photos one SKU event may carry, and that each is named once.

The captioner decodes every photo of a SKU before masking, so an event with thousands of entries
(all pointing at one small-bytes, many-pixel PNG) was an out-of-memory crash loop; a photo_id given
twice made the generator render from the wrong photo and the trainstore overwrite a real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka.structs import TopicPartition
from pydantic import ValidationError

from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import DeadLetter, Envelope
from schemas.events import MAX_PHOTOS_PER_EVENT, CaptionedPhoto, ReferencePhoto, SkuCaptioned, SkuIngested
from schemas.topics import SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from shared.bus import make_envelope
from shared.config import ConfigError, load_settings
from shared.errors import BadInput
from shared.matting.session import U2NetPSession
from shared.runtime import Emit, Stage
from tests.support.captioning import blank_sku, context, matting_calls
from tests.support.runtime import _record, _wired
from tests.support.store import ReadCountingStore


def _captioner(random_u2netp_onnx: Path) -> CaptionerModels:
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False)
    return CaptionerModels(session=session, vlm=None, options=load_settings(CaptionerSettings))


def _ingested_event(payload: SkuIngested) -> Envelope[SkuIngested]:
    return make_envelope(
        SKU_INGESTED, payload, event_id="a" * 32, sku_id=payload.sku.sku_id, trace_id="t", producer="test"
    )


def test_the_captioner_refuses_more_photos_than_allowed_before_reading_any(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    store = ReadCountingStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_photos_per_sku=3)
    payload = blank_sku(store, "SKU-MANY", colours=("white", "grey", "black", "red"))
    ctx = context(store, settings)

    with pytest.raises(BadInput) as refused:
        handle(_ingested_event(payload), ctx, models=_captioner(random_u2netp_onnx))

    assert refused.value.reason == "too_many_photos"
    assert "4 photos" in refused.value.detail and "SKUFORGE_MAX_PHOTOS_PER_SKU" in refused.value.detail
    assert store.keys_read == [] and matting_calls(ctx.metrics) == 0


def test_the_captioner_reads_a_sku_with_as_many_photos_as_allowed(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    store = ReadCountingStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_photos_per_sku=2)
    payload = blank_sku(store, "SKU-TWO", colours=("white", "grey"))

    with pytest.raises(BadInput) as refused:  # read, and refused only for what the photos show
        handle(_ingested_event(payload), context(store, settings), models=_captioner(random_u2netp_onnx))

    assert refused.value.reason == "no_usable_photo"
    assert len(store.keys_read) == 2


def _photo(photo_id: str) -> ReferencePhoto:
    image = ImageRef(uri=f"file:///store/{photo_id}.png", sha256="0" * 64, bytes=10, width=8, height=8)
    return ReferencePhoto(photo_id=photo_id, image=image, original_filename=f"{photo_id}.png")


def _raw_ingested(photos: list[ReferencePhoto]) -> bytes:
    """An sku.ingested record as a producer without our models could write it."""
    envelope = make_envelope(
        SKU_INGESTED,
        SkuIngested(sku=SkuMetadata(sku_id="SKU-1", name="n", category="c"), photos=[_photo("p")]),
        event_id="b" * 32,
        sku_id="SKU-1",
        trace_id="t",
        producer="test",
    ).model_dump(mode="json")
    envelope["payload"]["photos"] = [photo.model_dump(mode="json") for photo in photos]
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("photos", "complaint"),
    [
        ([_photo("p1"), _photo("p2"), _photo("p1")], "'p1' appears more than once"),
        ([_photo(f"p{index}") for index in range(MAX_PHOTOS_PER_EVENT + 1)], "at most 64 items"),
    ],
    ids=["duplicate_photo_id", "too_many_photos"],
)
def test_a_sku_event_with_a_repeated_photo_id_or_too_many_photos_is_schema_invalid(
    tmp_path: Path, photos: list[ReferencePhoto], complaint: str
) -> None:
    stage = Stage("review", settings=load_settings(store_uri=f"file://{tmp_path}"))
    handled: list[str] = []

    @stage.handler(SKU_INGESTED)
    def forward(event: object, ctx: object) -> list[Emit]:
        handled.append("called")
        return []

    consumer, producer = _wired(stage)
    tp = TopicPartition(stage.settings.topic_name(SKU_INGESTED), 0)
    stage._process_batch({tp: [_record(tp.topic, 0, _raw_ingested(photos))]})

    assert handled == []
    [(topic, value)] = producer.acked
    letter = DeadLetter.model_validate_json(value)
    assert topic == tp.topic + ".dlq" and letter.reason == "schema_invalid"
    assert complaint in letter.detail
    assert consumer.committed == {tp: 1}


def test_producers_cannot_build_a_sku_event_that_names_a_photo_twice() -> None:
    sku = SkuMetadata(sku_id="SKU-1", name="n", category="c")
    with pytest.raises(ValidationError, match="appears more than once"):
        SkuIngested(sku=sku, photos=[_photo("p1"), _photo("p1")])
    captioned = CaptionedPhoto(
        photo_id="p1", image=_photo("p1").image, usable=False, unusable_reason="blank_photo"
    )
    with pytest.raises(ValidationError, match="appears more than once"):
        SkuCaptioned(
            sku=sku,
            photos=[captioned, captioned],
            instance_token="sks",
            class_noun="can",
            instance_prompt="a photo of sks can",
            class_prompt="a photo of a can",
            captioner="test",
        )


def test_a_photo_limit_above_what_one_event_may_carry_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Above 64, start-up passed and every ingest of a large SKU failed building its event.
    monkeypatch.setenv("SKUFORGE_MAX_PHOTOS_PER_SKU", "65")
    with pytest.raises(ConfigError, match="SKUFORGE_MAX_PHOTOS_PER_SKU"):
        load_settings()
