"""The matting stage on the real broker while its model's device is down: a deployment fault, retried,
never the events' (docs/matting.md, "Bad input")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.envelope import Envelope
from schemas.events import ImageGenerated, ImageMatted
from schemas.topics import IMAGE_GENERATED, IMAGE_MATTED
from services.matting.config import MattingSettings
from services.matting.stage import build_stage
from shared.config import load_settings
from shared.store import ObjectStore
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
)
from tests.support.matting import FallingOver, image_generated, stand_in_onnx_bytes
from tests.support.polling import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def generated(store: ObjectStore, index: int) -> ImageGenerated:
    """An image.generated payload: a grey image with a product square in its expected mask."""
    image = store.put_image(f"generated/{index}.png", Image.new("RGB", (64, 48), (90, 120, 150)))
    expected = np.zeros((48, 64), np.uint8)
    expected[10:30, 20:40] = 255
    mask = store.put_image(f"fixtures/{index}-mask.png", expected)
    return image_generated(
        image, mask, item_id=f"item-{index}", sku_id=f"SKU-{index}", sku_name=f"Product {index}", seed=index
    )


def test_events_met_while_the_model_device_is_down_are_matted_once_it_is_back(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Before, a model whose every call failed (a GPU whose driver fell over) failed each event alone
    too, and each was dead-lettered as ``handler_error`` after SKUFORGE_HANDLER_MAX_ATTEMPTS: the whole
    stream went to the DLQ while /readyz said not ready. The blank warm-up image failing too says it is
    the model's device, not the image: retried until it runs again."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), handler_max_attempts=1)
    create_topics(settings, IMAGE_GENERATED, IMAGE_MATTED)
    session = FallingOver(stand_in_onnx_bytes(), threads=1, use_gpu=False, max_batch=2)
    session.warm_up()
    matting = load_settings(MattingSettings, matting_use_gpu=False, matting_max_batch=2)
    stage = build_stage(settings=settings, matting=matting, session=session)
    session.down = True
    produce(settings, IMAGE_GENERATED, [generated(stage.store, index) for index in range(2)])

    with running(stage):
        # More failed calls than the attempts a handler error gets: each event was tried, and again.
        wait_for("the model's calls to fail", lambda: session.failed_calls >= 6)
        assert not stage.ready()
        session.down = False  # from the next attempt on (FallingOver)
        outputs = read_topic(kafka_bootstrap, settings.topic_name(IMAGE_MATTED), expect=2, timeout_s=60)
        assert stage.ready()
    # The stage has stopped: a letter it wrote is in the topic, so its count is exact.
    letters = record_count(kafka_bootstrap, settings.dlq_name(IMAGE_GENERATED))

    assert letters == 0, "an event met while the device was down was dead-lettered"
    matted = sorted(
        Envelope[ImageMatted].model_validate_json(record.value).payload.generated.item_id
        for record in outputs
    )
    assert matted == ["item-0", "item-1"]
