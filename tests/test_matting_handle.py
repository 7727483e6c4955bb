"""The matting stage's ``handle_batch`` without Kafka: what each refused image is refused for.

``tests/test_matting_stage.py`` proves the wiring on a real broker; these cases need only the handler.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.common import ImageRef
from schemas.envelope import Envelope, derive_id
from schemas.events import ImageGenerated
from schemas.topics import IMAGE_GENERATED
from services.matting.stage import handle_batch
from shared.bus import make_envelope
from shared.config import load_settings
from shared.errors import BadInput
from shared.matting.session import U2NetPSession
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore, ObjectStore
from tests.support.matting import (
    green_with_a_red_tinge,
    image_generated,
    nan_where_red_onnx_bytes,
    stand_in_onnx_bytes,
)
from tests.support.store import ReadCountingStore


def stored(store: ObjectStore, key: str, image: Image.Image, fmt: str) -> ImageRef:
    """``image`` stored as ``fmt`` bytes (no re-encoding to PNG), referenced with its true size."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    ref = store.put_bytes(key, buffer.getvalue(), f"image/{fmt.lower()}")
    return ImageRef(uri=ref.uri, sha256=ref.sha256, bytes=ref.bytes, width=image.width, height=image.height)


def generated(store: ObjectStore, image: ImageRef) -> Envelope[ImageGenerated]:
    """An image.generated event for ``image``, whose expected mask covers all of it."""
    mask = store.put_image("fixtures/mask.png", np.full((image.height, image.width), 255, np.uint8))
    payload = image_generated(image, mask)
    return make_envelope(
        IMAGE_GENERATED, payload, event_id=derive_id("t", "1"), sku_id="SKU-1", trace_id="t", producer="t"
    )


def test_a_jpeg_over_the_pixel_limit_is_refused_for_its_pixels_not_as_a_lying_event(tmp_path: Path) -> None:
    """decode_image decodes a baseline JPEG over SKUFORGE_MAX_IMAGE_PIXELS at 1/2 its size; the stage
    then dead-lettered a truthful event as ``dimension_mismatch`` ("is 200x200, the event says 400x400"),
    where the same image as PNG is ``too_many_pixels``."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_image_pixels=100_000)
    ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("test"))
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False, max_batch=2)
    big = Image.new("RGB", (400, 400), "white")
    events = [generated(store, stored(store, f"generated/big.{fmt}", big, fmt)) for fmt in ("JPEG", "PNG")]
    for roi_margin in (0.25, None):
        results = handle_batch(events, ctx, session=session, roi_margin=roi_margin)
        reasons = [result.reason if isinstance(result, BadInput) else "matted" for result in results]
        assert reasons == ["too_many_pixels", "too_many_pixels"]
        assert "SKUFORGE_MAX_IMAGE_PIXELS" in str(results[0])
        for event, result in zip(events, results, strict=True):
            assert isinstance(result, BadInput)
            assert (result.detail or "").startswith(f"image {event.payload.image.uri}: ")


def truncated(store: ObjectStore, key: str, width: int, height: int) -> ImageRef:
    """A PNG of ``width`` x ``height`` cut in half, referenced with its sha256 and stated size."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, format="PNG")
    ref = store.put_bytes(key, buffer.getvalue()[: buffer.tell() // 2], "image/png")
    return ImageRef(uri=ref.uri, sha256=ref.sha256, bytes=ref.bytes, width=width, height=height)


@pytest.mark.parametrize(
    ("broken", "roi_margin"),
    [("image", 0.25), ("image", None), ("expected mask", 0.25)],  # with no ROI the mask is not read
)
def test_a_refused_image_or_expected_mask_is_named_with_its_uri(
    tmp_path: Path, broken: str, roi_margin: float | None
) -> None:
    """A dead letter said "truncated: ..." alone, unlike the gate's and the trainstore's: an event points
    at an image and its expected mask, and the letter did not say which to fix, nor where it lies."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_image_pixels=100_000)
    ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("test"))
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    event = generated(store, stored(store, "generated/ok.png", Image.new("RGB", (64, 48), "white"), "PNG"))
    ref = truncated(store, "generated/cut.png", 64, 48)
    field = {"image": "image", "expected mask": "expected_mask"}[broken]
    event = event.model_copy(update={"payload": event.payload.model_copy(update={field: ref})})

    (result,) = handle_batch([event], ctx, session=session, roi_margin=roi_margin)

    assert isinstance(result, BadInput) and result.reason == "truncated"
    assert (result.detail or "").startswith(f"{broken} {ref.uri}: ")


@pytest.mark.parametrize(
    ("side_px", "figures", "reason"),
    [(400, {}, "too_many_pixels"), (200, {"bytes": 10**9}, "too_large_bytes")],
)
def test_an_expected_mask_over_a_limit_is_refused_before_the_image_is_read(
    tmp_path: Path, side_px: int, figures: dict[str, int], reason: str
) -> None:
    """Matting inside the box around the expected mask needs both; an event whose expected mask its own
    figures put over a limit is refused before either is read. Before, the image (up to
    SKUFORGE_MAX_IMAGE_BYTES, decoded whole) was read and decoded first, and a mask over the pixel limit
    was read too, only for decoding to refuse it."""
    store = ReadCountingStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_image_pixels=100_000)
    ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("test"))
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    event = generated(store, stored(store, "generated/ok.png", Image.new("RGB", (200, 200), "white"), "PNG"))
    mask = store.put_image("fixtures/big-mask.png", np.full((side_px, side_px), 255, np.uint8))
    expected = ImageRef(**{**mask.model_dump(), **figures})
    event = event.model_copy(update={"payload": event.payload.model_copy(update={"expected_mask": expected})})

    (result,) = handle_batch([event], ctx, session=session, roi_margin=0.25)

    assert isinstance(result, BadInput) and result.reason == reason
    assert (result.detail or "").startswith(f"expected mask {expected.uri}: ")
    assert store.keys_read == []


def test_an_expected_mask_stated_at_another_size_than_its_image_is_refused_before_either_is_read(
    tmp_path: Path,
) -> None:
    """The event states both sizes; an expected mask stated at a size other than its image's cannot
    be matted against, so it is refused on those figures. Before, the image and the mask were both
    read and decoded first, and only their decoded sizes compared."""
    store = ReadCountingStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("test"))
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    event = generated(store, stored(store, "generated/ok.png", Image.new("RGB", (200, 200), "white"), "PNG"))
    mask = store.put_image("fixtures/wide-mask.png", np.full((200, 240), 255, np.uint8))
    event = event.model_copy(update={"payload": event.payload.model_copy(update={"expected_mask": mask})})

    (result,) = handle_batch([event], ctx, session=session, roi_margin=0.25)

    assert isinstance(result, BadInput) and result.reason == "dimension_mismatch"
    assert result.detail == f"expected mask {mask.uri} is 240x200, the image 200x200"
    assert store.keys_read == []


@pytest.mark.parametrize("nan_first", [False, True])
def test_an_image_the_model_gives_nan_for_is_refused_alone_and_the_stage_stays_ready(
    tmp_path: Path, nan_first: bool
) -> None:
    """One image whose map came out NaN failed the model call of its whole chunk (MattingModelError),
    was retried and dead-lettered as ``handler_error``, and left /readyz down when it was the last one
    run, until the next batch: one input's fault read as the model's. The model still mats its blank
    warm-up image, so the image is refused with its reason and the rest are matted."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("test"))
    session = U2NetPSession(nan_where_red_onnx_bytes(), threads=1, use_gpu=False, max_batch=2)
    session.warm_up()
    good = generated(store, stored(store, "generated/green.png", green_with_a_red_tinge(), "PNG"))
    white = generated(store, stored(store, "generated/white.png", Image.new("RGB", (64, 48), "white"), "PNG"))
    events = [white, good] if nan_first else [good, white]
    results = handle_batch(events, ctx, session=session, roi_margin=0.25)
    by_image = dict(zip(("white", "good") if nan_first else ("good", "white"), results, strict=True))
    refusal = by_image["white"]
    assert isinstance(refusal, BadInput) and refusal.reason == "model_output_not_finite", refusal
    assert session.model_id in str(refusal)
    assert not isinstance(by_image["good"], BadInput)
    assert session.ready
