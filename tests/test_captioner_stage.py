"""The captioner stage on the real broker: ingested SKUs come out captioned, hopeless ones go to the DLQ.

The masks come from the committed U2-NetP: whether a photo shows a product is the point of this
test, and a random-weight model cannot tell (see tests/support/captioning.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.envelope import DeadLetter, Envelope
from schemas.events import SkuCaptioned
from schemas.topics import SKU_CAPTIONED, SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import build_stage
from services.ingest.ingest import ingest_path
from shared.captioning.prompts import instance_token
from shared.config import load_settings
from shared.images import decode_mask
from shared.store import ObjectStore
from shared.synth import write_sku_folders
from tests.support.bus import create_topics, file_store_uri, isolated_settings, produce, read_topic, running
from tests.support.captioning import (
    blank_sku,
    blue_box_on_white,
    committed_matting_model,
    green_product,
    nan_where_red_models,
    photos_sku,
    synthetic_sku,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SEED = 2026
SIZE_PX = 192


def test_skus_are_captioned_and_a_sku_without_a_product_is_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    model = committed_matting_model()
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, SKU_CAPTIONED)
    stage = build_stage(
        settings=settings,
        captioner=load_settings(
            CaptionerSettings, captioner_matting_model=str(model), captioner_use_gpu=False
        ),
    )
    store = stage.store

    folders = write_sku_folders(tmp_path / "synth", skus=3, photos_per_sku=2, seed=SEED, size_px=SIZE_PX)
    ingest_path(tmp_path / "synth" / "skus", settings, store=store)
    # A SKU whose second photo vanished from the store and whose third was overwritten, and a
    # SKU of flat grey and white pictures.
    damaged = synthetic_sku(store, 10, seed=SEED, photos=3, size_px=SIZE_PX)
    store.delete(store.key_for(damaged.photos[1].image.uri))
    store.put_bytes(store.key_for(damaged.photos[2].image.uri), b"not the photo the event promised")
    blank = blank_sku(store, "BLANK-0001")
    produce(settings, SKU_INGESTED, [damaged, blank])

    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(SKU_CAPTIONED), expect=4, timeout_s=240)
        letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=60)
        assert stage.ready()

    captioned = {
        event.sku_id: event.payload
        for event in (Envelope[SkuCaptioned].model_validate_json(record.value) for record in outputs)
    }
    ingested_ids = [folder.name for folder in folders]
    assert len(outputs) == 4
    assert sorted(captioned) == sorted([*ingested_ids, damaged.sku.sku_id])
    for sku_id in ingested_ids:
        payload = captioned[sku_id]
        assert len(payload.photos) == 2
        assert all(photo.usable for photo in payload.photos), [p.unusable_reason for p in payload.photos]
        check_captioned(store, payload)

    photos = {photo.photo_id: photo for photo in captioned[damaged.sku.sku_id].photos}
    assert photos["photo-1"].usable
    assert (photos["photo-2"].usable, photos["photo-2"].unusable_reason) == (False, "object_missing")
    assert (photos["photo-3"].usable, photos["photo-3"].unusable_reason) == (False, "checksum_mismatch")
    assert photos["photo-2"].mask is None and photos["photo-3"].mask is None
    check_captioned(store, captioned[damaged.sku.sku_id])

    (letter,) = [DeadLetter.model_validate_json(record.value) for record in letters]
    assert (letter.sku_id, letter.reason, letter.stage) == ("BLANK-0001", "no_usable_photo", "captioner")
    assert "all 2 photos (blank-0, blank-1): blank_photo" in letter.detail, letter.detail
    assert not list(store.list_keys("masks/reference/BLANK-0001/"))


def test_a_photo_the_matting_model_gives_nan_for_is_unusable_and_the_stage_stays_ready(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """On the broker: that photo failed its whole SKU, retried and dead-lettered as handler_error."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, SKU_CAPTIONED)
    stage = build_stage(settings=settings, models=nan_where_red_models())
    store = stage.store
    mixed = photos_sku(store, "SKU-MIXED", {"white": blue_box_on_white(), "green": green_product()})
    only_nan = photos_sku(store, "SKU-NAN", {"white": blue_box_on_white()})
    produce(settings, SKU_INGESTED, [mixed, only_nan])
    with running(stage):
        (output,) = read_topic(kafka_bootstrap, settings.topic_name(SKU_CAPTIONED), expect=1, timeout_s=120)
        (letter,) = read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=60)
        assert stage.ready()
    captioned = Envelope[SkuCaptioned].model_validate_json(output.value).payload
    photos = {photo.photo_id: photo for photo in captioned.photos}
    assert (photos["white"].usable, photos["white"].unusable_reason) == (False, "model_output_not_finite")
    assert photos["green"].usable and photos["green"].mask is not None
    dead = DeadLetter.model_validate_json(letter.value)
    assert (dead.sku_id, dead.reason) == ("SKU-NAN", "no_usable_photo")
    assert "white: model_output_not_finite" in dead.detail


def check_captioned(store: ObjectStore, payload: SkuCaptioned) -> None:
    """Masks stored where the photo says, prompts filled, captions and tags from the measurements."""
    sku = payload.sku
    token = instance_token(sku.sku_id)
    assert payload.instance_token == token
    assert payload.class_noun == sku.category
    assert payload.instance_prompt == f"a photo of {token} {sku.category}"
    assert payload.class_prompt.startswith("a photo of a") and payload.class_prompt.endswith(sku.category)
    assert payload.negative_prompt
    assert "u2netp-skuforge.onnx@sha256:" in payload.captioner
    for photo in payload.photos:
        if not photo.usable:
            continue
        assert photo.mask is not None
        assert photo.mask.uri == store.uri_for(
            f"masks/reference/{sku.sku_id}/{photo.photo_id}-{photo.mask.sha256[:16]}.png"
        )
        mask = decode_mask(store.read_verified(photo.mask))
        assert mask.shape == (photo.image.height, photo.image.width)
        assert 0.005 < (mask > 0).mean() < 0.95
        assert photo.colours and photo.caption.startswith("a photo of")
        assert photo.colours[0] in photo.caption.split(",")[0]
        assert sku.brand in photo.caption and photo.view in photo.caption
        assert photo.colours[0] in photo.tags and sku.brand.lower() in photo.tags
        assert photo.plain_background is not None and 0.0 <= photo.plain_background <= 1.0
