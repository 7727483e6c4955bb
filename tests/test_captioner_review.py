"""The captioner's handler, called without Kafka, on inputs a review found it mishandled."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from schemas.common import SkuMetadata
from schemas.events import ReferencePhoto, SkuCaptioned, SkuIngested
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from shared.config import load_settings
from shared.errors import BadInput
from shared.matting.session import U2NetPSession
from shared.store import FileStore, ObjectStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import context
from tests.support.matting import nan_where_red_onnx_bytes


def _nan_where_red_models() -> CaptionerModels:
    """Captioner models around a matting model that gives NaN for a photo with much red in it."""
    session = U2NetPSession(nan_where_red_onnx_bytes(), threads=1, use_gpu=False)
    session.warm_up()
    return CaptionerModels(
        session=session, vlm=None, options=load_settings(CaptionerSettings, captioner_use_gpu=False)
    )


def _green_product() -> Image.Image:
    """A photo the NaN model mats: green, its left half with some red (under half the brightest)."""
    image = Image.new("RGB", (128, 96), (0, 200, 0))
    image.paste((80, 200, 0), (0, 0, 64, 96))
    return image


def _blue_box_on_white() -> Image.Image:
    """A product photo on a white backdrop: not blank, but its red backdrop gives the model NaN."""
    image = Image.new("RGB", (128, 96), "white")
    image.paste((20, 40, 200), (32, 16, 96, 80))
    return image


def _event(store: ObjectStore, sku_id: str, photos: dict[str, Image.Image]) -> SkuIngested:
    references = [
        ReferencePhoto(
            photo_id=photo_id,
            image=store.put_image(f"incoming/{sku_id}/{photo_id}.png", image),
            original_filename=f"{photo_id}.png",
        )
        for photo_id, image in photos.items()
    ]
    return SkuIngested(
        sku=SkuMetadata(sku_id=sku_id, name="Fizz", category="soda can", brand="Acme"), photos=references
    )


@pytest.mark.parametrize("nan_first", [False, True])
def test_a_photo_the_matting_model_gives_nan_for_is_unusable_alone(tmp_path: Path, nan_first: bool) -> None:
    """The captioner called ``session.predict``, which raises MattingModelError when one photo's map
    is NaN: the whole SKU failed, was retried and dead-lettered as ``handler_error``. The model still
    mats its blank warm-up image, so that photo is unusable (``model_output_not_finite``), as the
    matting stage refuses it, and the SKU is captioned from the others."""
    store = FileStore(tmp_path / "store")
    ctx = context(store, load_settings(store_uri=store.base_uri))
    models = _nan_where_red_models()
    photos = {"white": _blue_box_on_white(), "green": _green_product()}
    if not nan_first:
        photos = dict(reversed(photos.items()))
    [emit] = handle(ingested_envelope(_event(store, "SKU-NAN", photos)), ctx, models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    captioned = {photo.photo_id: photo for photo in emit.payload.photos}
    assert (captioned["white"].usable, captioned["white"].unusable_reason) == (
        False,
        "model_output_not_finite",
    )
    assert captioned["white"].mask is None
    assert captioned["green"].usable, captioned["green"].unusable_reason
    assert captioned["green"].mask is not None
    assert models.session.ready


def test_a_sku_whose_only_photo_the_model_gives_nan_for_is_refused_with_that_reason(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ctx = context(store, load_settings(store_uri=store.base_uri))
    event = ingested_envelope(_event(store, "SKU-NAN", {"white": _blue_box_on_white()}))
    with pytest.raises(BadInput, match="no_usable_photo") as refused:
        handle(event, ctx, models=_nan_where_red_models())
    assert "white: model_output_not_finite" in refused.value.detail, refused.value.detail
