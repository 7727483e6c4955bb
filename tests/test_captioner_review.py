"""The captioner's handler, called without Kafka, on inputs a review found it mishandled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.common import SKU_ID_MAX_LEN
from schemas.envelope import MAX_DEAD_LETTER_DETAIL_CHARS, clipped
from schemas.events import MAX_PHOTOS_PER_EVENT, SkuCaptioned
from services.captioner.stage import handle
from shared.config import load_settings
from shared.errors import BadInput
from shared.store import FileStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import (
    blue_box_on_white,
    context,
    green_product,
    nan_where_red_models,
    photos_sku,
)


@pytest.mark.parametrize("nan_first", [False, True])
def test_a_photo_the_matting_model_gives_nan_for_is_unusable_alone(tmp_path: Path, nan_first: bool) -> None:
    """The captioner called ``session.predict``, which raises MattingModelError when one photo's map
    is NaN: the whole SKU failed, was retried and dead-lettered as ``handler_error``. The model still
    mats its blank warm-up image, so that photo is unusable (``model_output_not_finite``), as the
    matting stage refuses it, and the SKU is captioned from the others."""
    store = FileStore(tmp_path / "store")
    ctx = context(store, load_settings(store_uri=store.base_uri))
    models = nan_where_red_models()
    photos = {"white": blue_box_on_white(), "green": green_product()}
    if not nan_first:
        photos = dict(reversed(photos.items()))
    [emit] = handle(ingested_envelope(photos_sku(store, "SKU-NAN", photos)), ctx, models=models)
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
    event = ingested_envelope(photos_sku(store, "SKU-NAN", {"white": blue_box_on_white()}))
    with pytest.raises(BadInput, match="no_usable_photo") as refused:
        handle(event, ctx, models=nan_where_red_models())
    assert "white: model_output_not_finite" in refused.value.detail, refused.value.detail


def test_a_sku_of_many_photos_the_model_gives_nan_for_says_why_of_each_in_its_letter(tmp_path: Path) -> None:
    """Each photo's reason came with the model's whole sentence about NaN, once per photo: with the
    most photos an event carries the detail was about four times what a dead letter holds
    (``MAX_DEAD_LETTER_DETAIL_CHARS``), and the runtime cut the reasons of all but the first photos.
    Photos refused alike are named together, the sentence said once."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_photos_per_sku=MAX_PHOTOS_PER_EVENT)
    photos = {f"photo-{index:02d}": blue_box_on_white() for index in range(MAX_PHOTOS_PER_EVENT)}
    event = ingested_envelope(photos_sku(store, "SKU-NAN", photos))
    with pytest.raises(BadInput) as refused:
        handle(event, context(store, settings), models=nan_where_red_models())
    assert refused.value.reason == "no_usable_photo"
    detail = refused.value.detail
    assert clipped(detail, MAX_DEAD_LETTER_DETAIL_CHARS) == detail, f"cut in the dead letter: {len(detail)}"
    every = f"all {len(photos)} photos ({', '.join(photos)}): model_output_not_finite ("
    assert every in detail, detail
    assert detail.count("gave NaN or infinite confidences") == 1, detail


def test_a_sku_of_many_photos_missing_from_the_store_says_why_of_each_in_its_letter(tmp_path: Path) -> None:
    """Photos refused with one reason but each with its own detail (``object_missing`` names each
    photo's URI) were named one by one, each with its detail: with the most photos an event carries the
    detail was about twice what a dead letter holds, and the runtime cut the later photos' reasons.
    Photos refused for one reason are named together, with the first detail and how many more."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_photos_per_sku=MAX_PHOTOS_PER_EVENT)
    photos = {f"photo-{index:02d}": blue_box_on_white() for index in range(MAX_PHOTOS_PER_EVENT)}
    event = ingested_envelope(photos_sku(store, "SKU-GONE", photos))
    for photo_id in photos:
        store.delete(f"incoming/SKU-GONE/{photo_id}.png")
    with pytest.raises(BadInput) as refused:
        handle(event, context(store, settings), models=nan_where_red_models())
    assert refused.value.reason == "object_missing"
    detail = refused.value.detail
    assert clipped(detail, MAX_DEAD_LETTER_DETAIL_CHARS) == detail, f"cut in the dead letter: {len(detail)}"
    every = f"all {len(photos)} photos ({', '.join(photos)}): object_missing (no object at "
    assert every in detail, detail
    assert detail.endswith("photo-00.png; and 63 more))"), detail


_NAMED = re.compile(r"(?:all \d+ photos \()?((?:[\w.-]+, )*[\w.-]+)(?: and (\d+) more)?\)?: (\w+) \(")


@pytest.mark.parametrize("missing", [64, 32], ids=["all-missing", "half-missing-half-nan"])
def test_a_letter_naming_64_photo_ids_of_64_characters_fits_in_a_dead_letter(
    tmp_path: Path, missing: int
) -> None:
    """64 photo ids of 64 characters (the longest ids an event carries, as many as it carries) are
    4,224 characters named alone, past the 4,000 of a dead letter's detail even when grouped by
    reason: the runtime cut the letter, and the reasons said last with it. The first ids of each
    reason are named and the others counted ("and 50 more"), every reason said."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri, max_photos_per_sku=MAX_PHOTOS_PER_EVENT)
    photos = {
        f"photo-{index:02d}-".ljust(SKU_ID_MAX_LEN, "x"): blue_box_on_white()
        for index in range(MAX_PHOTOS_PER_EVENT)
    }
    event = ingested_envelope(photos_sku(store, "SKU-LONG-IDS", photos))
    for photo_id in list(photos)[:missing]:
        store.delete(f"incoming/SKU-LONG-IDS/{photo_id}.png")
    with pytest.raises(BadInput) as refused:
        handle(event, context(store, settings), models=nan_where_red_models())
    assert refused.value.reason == "object_missing"  # curable: a replay retries it once they are back
    detail = refused.value.detail
    assert clipped(detail, MAX_DEAD_LETTER_DETAIL_CHARS) == detail, f"cut in the dead letter: {len(detail)}"
    counted = {
        reason: len(named.split(", ")) + int(more or 0) for named, more, reason in _NAMED.findall(detail)
    }
    expected = {"object_missing": missing}
    if missing < len(photos):
        expected["model_output_not_finite"] = len(photos) - missing
    assert counted == expected, detail
    assert f"{next(iter(photos))}" in detail
