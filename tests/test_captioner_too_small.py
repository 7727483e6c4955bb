"""The captioner's handler, called without Kafka, on photos smaller than ``SKUFORGE_MIN_PHOTO_SIDE_PX``.

``skuforge ingest`` refuses such photos, but an ``sku.ingested`` event may come from elsewhere (a
replayed DLQ, another producer): the captioner marks them unusable itself, so a 2x2 photo is never
captioned, composited as flat quads of colour and stored as training data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import Envelope
from schemas.events import ReferencePhoto, SkuCaptioned, SkuIngested
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from shared.config import load_settings
from shared.dlq import is_permanent
from shared.errors import BadInput
from shared.photos import WORKING_SIDE_PX, working_size
from shared.store import FileStore
from shared.synth import make_product, render_photo
from tests.support.bus import ingested_envelope
from tests.support.captioning import committed_session, context, matting_calls, random_models, stored_photos
from tests.support.store import ReadCountingStore

SEED = 2026


def _event(store: FileStore, sku_id: str, photos: dict[str, Image.Image]) -> Envelope[SkuIngested]:
    sku = SkuMetadata(**{**make_product(0, SEED).metadata(), "sku_id": sku_id})
    return ingested_envelope(SkuIngested(sku=sku, photos=stored_photos(store, sku_id, photos)))


def _product(size_px: int) -> Image.Image:
    """A renderer product photo shrunk to ``size_px``: colourful, so never a ``blank_photo``."""
    photo = render_photo(make_product(0, SEED), 0, SEED, size_px=192).image
    return photo.resize((size_px, size_px), Image.Resampling.LANCZOS)


def test_a_photo_below_the_minimum_side_is_unusable_as_too_small(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    models = CaptionerModels(
        session=committed_session(),
        vlm=None,
        options=load_settings(CaptionerSettings, captioner_use_gpu=False),
    )
    event = _event(store, "SKU-MIXED", {"full": _product(192), "tiny": _product(8), "edge": _product(64)})
    [emit] = handle(event, context(store, settings), models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    photos = {photo.photo_id: photo for photo in emit.payload.photos}
    assert (photos["tiny"].usable, photos["tiny"].unusable_reason) == (False, "too_small")
    assert photos["tiny"].mask is None and not photos["tiny"].caption
    assert photos["full"].usable, photos["full"].unusable_reason
    assert photos["edge"].unusable_reason != "too_small", "64 px is the smallest side accepted"


def test_a_sku_of_only_too_small_photos_is_refused_without_a_matting_call(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    models = random_models(random_u2netp_onnx)
    event = _event(store, "SKU-TINY", {"two": _product(2), "eight": _product(8)})
    ctx = context(store, settings)
    with pytest.raises(BadInput, match="no_usable_photo") as refused:
        handle(event, ctx, models=models)
    assert "two: too_small (2x2 px; the shorter side must be at least 64 px" in refused.value.detail
    assert "eight: too_small (8x8 px;" in refused.value.detail
    assert matting_calls(ctx.metrics) == 0

    # The setting decides: allowed, the same photos reach the model.
    ctx = context(store, load_settings(store_uri=store.base_uri, min_photo_side_px=2))
    try:
        handle(event, ctx, models=models)
    except BadInput as exc:
        assert "too_small" not in exc.detail
    assert matting_calls(ctx.metrics) == 1


def test_a_sku_whose_photos_are_all_missing_is_dead_lettered_as_replayable(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    # Folded into no_usable_photo, a permanent reason, the SKU was left behind by a plain
    # `skuforge dlq replay` after the store was restored, where docs/delivery.md says object_missing
    # letters are replayed once the object is back.
    store = FileStore(tmp_path / "store")
    event = _event(store, "SKU-GONE", {"p1": _product(192), "p2": _product(8)})
    store.delete("incoming/SKU-GONE/p1.png")
    with pytest.raises(BadInput) as refused:
        handle(
            event,
            context(store, load_settings(store_uri=store.base_uri)),
            models=random_models(random_u2netp_onnx),
        )
    assert refused.value.reason == "object_missing" and not is_permanent(refused.value.reason)
    assert "p1: object_missing" in refused.value.detail and "p2: too_small" in refused.value.detail


def test_a_jpeg_over_the_pixel_limit_is_too_many_pixels_not_a_lying_event(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    # decode_image decodes a baseline JPEG over SKUFORGE_MAX_IMAGE_PIXELS at 1/2, 1/4 or 1/8 of its
    # size; the captioner then marked the photo dimension_mismatch ("200x200, the event says
    # 400x400"), blaming a truthful event, where the same photo as PNG is too_many_pixels.
    store = FileStore(tmp_path / "store")
    big = _product(400)
    references = []
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        big.save(buffer, format=fmt)
        stored = store.put_bytes(f"incoming/SKU-BIG/{fmt}.img", buffer.getvalue(), f"image/{fmt.lower()}")
        ref = ImageRef(uri=stored.uri, sha256=stored.sha256, bytes=stored.bytes, width=400, height=400)
        references.append(ReferencePhoto(photo_id=fmt.lower(), image=ref, original_filename=f"big.{fmt}"))
    spec = make_product(0, SEED)
    event = ingested_envelope(
        SkuIngested(sku=SkuMetadata(**{**spec.metadata(), "sku_id": "SKU-BIG"}), photos=references)
    )
    ctx = context(store, load_settings(store_uri=store.base_uri, max_image_pixels=100_000))
    with pytest.raises(BadInput, match="no_usable_photo") as refused:
        handle(event, ctx, models=random_models(random_u2netp_onnx))
    assert "all 2 photos (jpeg, png): too_many_pixels" in refused.value.detail, refused.value.detail
    assert "SKUFORGE_MAX_IMAGE_PIXELS" in refused.value.detail


def test_a_transparency_mask_over_the_pixel_limit_is_not_read(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    """A cut-out's transparency mask the event says is over SKUFORGE_MAX_IMAGE_PIXELS is left for the
    matting model without being read, as the photo itself would be. Before, it was read whole, only for
    decoding to refuse it."""
    store = ReadCountingStore(tmp_path / "store")
    event = _event(store, "SKU-CUT", {"p1": _product(192)})
    mask = store.put_image("incoming/SKU-CUT/p1-mask.png", np.full((256, 256), 255, np.uint8))
    photo = event.payload.photos[0].model_copy(update={"mask": mask})
    event = event.model_copy(update={"payload": event.payload.model_copy(update={"photos": [photo]})})
    ctx = context(store, load_settings(store_uri=store.base_uri, max_image_pixels=40_000))
    try:
        handle(event, ctx, models=random_models(random_u2netp_onnx))
    except BadInput as refused:  # the random model may find no product: the photo was still masked
        assert refused.reason == "no_usable_photo"
    assert store.keys_read == ["incoming/SKU-CUT/p1.png"]


def test_a_transparency_mask_stated_at_another_size_than_its_photo_is_not_read(
    random_u2netp_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A transparency mask the event states at a size other than its photo's cannot outline the
    product; it is skipped on the event's figures (the matting model masks the photo) without being
    read. Before, it was read and decoded, only for its size to be compared and the mask ignored."""
    store = ReadCountingStore(tmp_path / "store")
    event = _event(store, "SKU-CUT", {"p1": _product(192)})
    mask = store.put_image("incoming/SKU-CUT/p1-mask.png", np.full((160, 192), 255, np.uint8))
    photo = event.payload.photos[0].model_copy(update={"mask": mask})
    event = event.model_copy(update={"payload": event.payload.model_copy(update={"photos": [photo]})})
    ctx = context(store, load_settings(store_uri=store.base_uri))
    with caplog.at_level("WARNING", logger=ctx.log.name):
        try:
            handle(event, ctx, models=random_models(random_u2netp_onnx))
        except BadInput as refused:  # the random model may find no product: the photo was still masked
            assert refused.reason == "no_usable_photo"
    assert store.keys_read == ["incoming/SKU-CUT/p1.png"]
    assert [record.getMessage() for record in caplog.records if record.name == ctx.log.name] == [
        "transparency mask is not the photo's size; the matting model masks the photo"
    ]


def test_a_long_thin_photo_too_thin_at_the_working_size_is_too_small_before_the_model(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    """A 20000x64 photo passes the minimum side, but the captioner works at 2048 px on the longer side,
    where its shorter side is 7 px: the model was asked to mask a thread of pixels, and the photo was
    captioned from that mask (or, by another model, ended ``no_product_found``, which blamed the product
    for the photo's shape)."""
    store = FileStore(tmp_path / "store")
    strip = _product(64).resize((20000, 64), Image.Resampling.NEAREST)
    event = _event(store, "SKU-STRIP", {"strip": strip})
    ctx = context(store, load_settings(store_uri=store.base_uri))
    with pytest.raises(BadInput, match="no_usable_photo") as refused:
        handle(event, ctx, models=random_models(random_u2netp_onnx))
    assert (
        "strip: too_small (20000x64 px, masked at most 2048 px long: its shorter side would be 7 px; "
        "it must be at least 64 px there (SKUFORGE_MIN_PHOTO_SIDE_PX): crop it"
    ) in refused.value.detail
    assert matting_calls(ctx.metrics) == 0


@pytest.mark.parametrize("height", [1, 7, 64, 65, 97, 333, 2047])
def test_the_working_size_ingest_checks_is_the_size_the_captioner_shrinks_a_photo_to(height: int) -> None:
    """``skuforge ingest`` refuses a photo too thin at ``working_size`` without shrinking it; the
    captioner shrinks it with ``Image.thumbnail``: the two must agree to the pixel, either way round,
    or ingest takes a photo the captioner then calls too small."""
    for width in [*range(WORKING_SIDE_PX - 2, 40_000, 997), 20_000]:
        for size in ((width, height), (height, width)):
            photo = Image.new("1", size)
            photo.thumbnail((WORKING_SIDE_PX, WORKING_SIDE_PX), Image.Resampling.BILINEAR)
            assert working_size(*size) == photo.size, size
