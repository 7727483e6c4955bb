"""Captioner, on the real broker: a SKU whose category holds no Latin letters is captioned like any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.envelope import Envelope
from schemas.events import SkuCaptioned
from schemas.topics import SKU_CAPTIONED, SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import build_stage
from shared.config import load_settings
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
)
from tests.support.captioning import committed_matting_model, synthetic_sku

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_a_category_without_latin_letters_is_captioned_and_the_next_sku_too(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Before: the packaging check read no word from "飲料" (drinks) and failed on its own empty word
    # list (ValueError from zip), so the SKU was retried with its whole matting work and then
    # dead-lettered as handler_error: a retailer's Japanese or Chinese catalogue was never captioned.
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, SKU_CAPTIONED, partitions=1)
    stage = build_stage(
        settings=settings,
        captioner=load_settings(
            CaptionerSettings, captioner_matting_model=str(committed_matting_model()), captioner_use_gpu=False
        ),
    )
    skus = [synthetic_sku(stage.store, index, seed=2026, photos=1) for index in (1, 2, 3)]
    skus = [
        sku.model_copy(update={"sku": sku.sku.model_copy(update={"category": category})})
        for sku, category in zip(skus, ["飲料", "330", "soda can"], strict=True)
    ]
    produce(settings, SKU_INGESTED, skus)

    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(SKU_CAPTIONED), expect=3, timeout_s=120)
    # The stage has stopped: a letter it wrote is in the topic, so reading as many as there are reads it.
    dlq = settings.dlq_name(SKU_INGESTED)
    letters = read_topic(kafka_bootstrap, dlq, expect=record_count(kafka_bootstrap, dlq), timeout_s=30)

    captioned = [Envelope[SkuCaptioned].model_validate_json(record.value).payload for record in outputs]
    assert [(event.sku.sku_id, event.sku.category) for event in captioned] == [
        (sku.sku.sku_id, sku.sku.category) for sku in skus
    ]
    assert all(photo.usable for event in captioned for photo in event.photos)
    assert letters == []
