"""The captioner's and the matting stage's handlers, called without Kafka: what they count as model calls.

``skuforge_model_batch_size`` and ``skuforge_model_seconds`` count model calls; the dashboard's mean
batch size is their sum over their count. An input whose every image is refused before the model
must not add a call of zero images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.envelope import Envelope, derive_id
from schemas.events import ImageGenerated
from schemas.topics import IMAGE_GENERATED, SKU_INGESTED
from services.captioner.stage import handle
from services.matting.stage import handle_batch
from shared.bus import make_envelope
from shared.config import load_settings
from shared.errors import BadInput
from shared.matting.session import CPU_CALL_IMAGES, U2NetPSession
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from tests.support.captioning import blank_sku, context, matting_calls, random_models
from tests.support.matting import image_generated


def generated_event(store: FileStore, index: int, *, missing: bool = False) -> Envelope[ImageGenerated]:
    """An image.generated event of a white 64 px image (``missing``: one deleted from the store)."""
    photo = store.put_image("generated/a.png", Image.new("RGB", (64, 64), "white"))
    mask = store.put_image("generated/a-mask.png", np.full((64, 64), 255, np.uint8))
    image = photo
    if missing:
        image = store.put_image(f"generated/gone-{index}.png", Image.new("RGB", (64, 64), "red"))
        store.delete(store.key_for(image.uri))
    payload = image_generated(
        image, mask, reference=photo, item_id=f"item-{index}", seed=index, variant_index=index
    )
    return make_envelope(
        IMAGE_GENERATED,
        payload,
        event_id=derive_id("t", str(index)),
        sku_id="SKU-1",
        trace_id="t",
        producer="t",
    )


def test_a_sku_with_only_blank_photos_is_refused_without_a_matting_call(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    models = random_models(random_u2netp_onnx)
    payload = blank_sku(store, "SKU-BLANK")
    event = make_envelope(
        SKU_INGESTED,
        payload,
        event_id=derive_id("test", "blank"),
        sku_id="SKU-BLANK",
        trace_id="t",
        producer="test",
    )
    ctx = context(store, settings)
    with pytest.raises(BadInput, match="blank_photo"):
        handle(event, ctx, models=models)
    assert matting_calls(ctx.metrics) == 0


def test_a_batch_of_refused_images_adds_no_matting_call(random_u2netp_onnx: Path, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("test"))
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False, max_batch=4)
    # Two chunks of max_batch 4: the first has one readable image, the second none.
    events = [generated_event(store, index, missing=index != 0) for index in range(8)]
    results = handle_batch(events, ctx, session=session, roi_margin=0.25)
    assert [isinstance(result, BadInput) for result in results] == [False] + [True] * 7
    assert matting_calls(ctx.metrics) == 1


def test_a_matting_call_is_a_chunk_of_max_batch_images_as_the_metric_help_says(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    # The help said "Inputs per model call": ONNX Runtime on the CPU runs a chunk of max_batch images
    # as calls of at most CPU_CALL_IMAGES, and the stage counts the chunk, one predict, as the call.
    # That is what the dashboard's "stage micro-batches" panel means; the help now says so.
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("test"))
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False, max_batch=6)
    events = [generated_event(store, index) for index in range(9)]  # chunks of 6 and 3; ORT: 4, 2, 3
    results = handle_batch(events, ctx, session=session)
    assert not any(isinstance(result, BadInput) for result in results)
    (family,) = [f for f in ctx.metrics.registry.collect() if f.name == "skuforge_model_batch_size"]
    observed = {
        sample.name: sample.value for sample in family.samples if sample.labels.get("model") == "matting"
    }
    assert observed["skuforge_model_batch_size_count"] == 2
    assert observed["skuforge_model_batch_size_sum"] == 9
    assert "SKUFORGE_MATTING_MAX_BATCH" in family.documentation
    assert f"at most {CPU_CALL_IMAGES} at a time" in family.documentation
