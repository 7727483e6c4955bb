"""A real photo whose mask found no product is still a real photo of the product.

The captioner marks a photo ``no_product_found`` (or ``mask_full_frame``) when matting finds no single
product in it: most often a pile of loose produce filling the frame, which is how in-store photos of
limes or cucumbers look. Useless as a compositing reference; a good training image for a classifier.
Before, the trainstore recorded it as ``unusable`` and the export left it out: 4 of the 162 in-store
photos of the few-shot benchmark at k = 1 (bench/augment.py), 7 of 324 at k = 3.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from schemas.common import ImageRef
from schemas.envelope import Envelope, utc_now
from schemas.events import CaptionedPhoto, SkuCaptioned
from schemas.topics import SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.config import Settings
from shared.errors import BadInput
from shared.runtime import Context
from shared.store import FileStore
from shared.synth import make_product, render_photo
from shared.trainstore.dataset import export_dataset, sku_stats
from tests.support.gate import captioned
from tests.support.trainstore import WritesMeanwhile, stored, trainstore_stage

SKU = "SKU-001"


def _envelope(
    event: SkuCaptioned, event_id: str, produced_at: datetime | None = None
) -> Envelope[SkuCaptioned]:
    """``event`` as the captioner publishes it, with event id ``event_id`` * 32, produced now unless
    ``produced_at`` is given."""
    return make_envelope(
        SKU_CAPTIONED,
        event,
        event_id=event_id * 32,
        sku_id=SKU,
        trace_id="t" * 32,
        producer="test",
        produced_at=produced_at,
    )


def _write(writer: Trainstore, ctx: Context, event: SkuCaptioned, event_id: str) -> None:
    writer.captioned(_envelope(event, event_id), ctx)


def _with_pile(store: FileStore, event: SkuCaptioned, reason: str) -> SkuCaptioned:
    """``event`` with one more photo, a good picture whose mask found no product."""
    photo = render_photo(make_product(1, 5), 7, 5, size_px=96)
    pile = CaptionedPhoto(
        photo_id="p-pile",
        image=store.put_image("fixtures/pile.png", photo.image),
        usable=False,
        unusable_reason=reason,
    )
    return event.model_copy(update={"photos": [*event.photos, pile]})


def _p1_without_a_mask(event: SkuCaptioned) -> SkuCaptioned:
    """``event`` captioned again by a matting model that finds no product in photo p1."""
    return event.model_copy(
        update={
            "photos": [
                photo.model_copy(update={"usable": False, "mask": None, "unusable_reason": "mask_full_frame"})
                if photo.photo_id == "p1"
                else photo
                for photo in event.photos
            ]
        }
    )


def test_a_photo_whose_mask_found_no_product_is_stored_and_exported_without_a_mask(tmp_path: Path) -> None:
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    _write(writer, ctx, _with_pile(store, captioned(store, 1, photos=1), "no_product_found"), "a")

    rows = manifests.read_sku(SKU)
    pile = rows["p-pile"]
    assert (pile.status, pile.source, pile.reasons, pile.mask) == (
        "reference",
        "real",
        ["no_product_found"],
        None,
    )
    assert stored(manifests, SKU, "p-pile", "real") == ([manifests.key(str(pile.image))], [])
    assert rows["p-blurry"].status == "unusable"  # not a mask problem: still never trained on
    (stats,) = sku_stats(rows.values())
    assert (stats.real, stats.unusable) == (2, 1)

    summary = export_dataset(manifests, tmp_path / "out", fmt="jsonl", max_synthetic_per_real=1)
    assert summary.classes[SKU]["real"] == 2
    lines = [json.loads(line) for line in (tmp_path / "out" / "dataset.jsonl").read_text().splitlines()]
    exported = {line["item_id"]: line for line in lines}
    assert exported["p-pile"]["mask"] is None and (tmp_path / "out" / exported["p-pile"]["image"]).is_file()


def test_a_photo_captioned_again_with_no_product_found_keeps_its_image_and_loses_its_old_mask(
    tmp_path: Path,
) -> None:
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first = captioned(store, 1, photos=2)
    _write(writer, ctx, first, "a")
    mask_key = manifests.key(str(manifests.read_sku(SKU)["p1"].mask))
    assert stored(manifests, SKU, "p1", "real")[1] == [mask_key]
    # A re-run with another matting model finds no product in p1.
    again = _p1_without_a_mask(first)
    _write(writer, ctx, again, "b")
    p1 = manifests.read_sku(SKU)["p1"]
    assert (p1.status, p1.mask, p1.reasons) == ("reference", None, ["mask_full_frame"])
    assert stored(manifests, SKU, "p1", "real") == ([manifests.key(str(p1.image))], [])


def test_a_maskless_jpeg_over_the_pixel_limit_is_too_many_pixels_not_a_lying_event(tmp_path: Path) -> None:
    # decode_image decodes a baseline JPEG over SKUFORGE_MAX_IMAGE_PIXELS at 1/2, 1/4 or 1/8 of its
    # size; the maskless photo was then dead-lettered as dimension_mismatch ("is 200x200, the event
    # says 400x400"), blaming a truthful event, where the same photo as PNG is too_many_pixels.
    settings = Settings(max_image_pixels=100_000, min_photo_side_px=64)
    store, _, writer, context = trainstore_stage(tmp_path, compact_after_parts=16, settings=settings)
    photo = render_photo(make_product(1, 5), 7, 5, size_px=400).image
    for fmt, event_id in (("JPEG", "a"), ("PNG", "b")):
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt)
        stored = store.put_bytes(f"fixtures/pile.{fmt}", buffer.getvalue(), f"image/{fmt.lower()}")
        pile = CaptionedPhoto(
            photo_id="p-pile",
            image=ImageRef(uri=stored.uri, sha256=stored.sha256, bytes=stored.bytes, width=400, height=400),
            usable=False,
            unusable_reason="no_product_found",
        )
        event = captioned(store, 1, photos=1).model_copy(update={"photos": [pile]})
        with pytest.raises(BadInput) as refused:
            writer.captioned(_envelope(event, event_id), context)
        assert refused.value.reason == "too_many_pixels", (fmt, str(refused.value))
        assert "SKUFORGE_MAX_IMAGE_PIXELS" in refused.value.detail


def test_a_photo_stored_without_a_mask_leaves_the_mask_of_a_newer_captioning_written_meanwhile(
    tmp_path: Path,
) -> None:
    """The mask-less path deleted every stored mask of the photo after its own write, without reading
    the manifest again: a newer captioning another member stored meanwhile, with a mask, kept its row,
    which then named a mask that was gone (its export failed on the missing object)."""
    # Another member stores a newer captioning of the SKU (its objects and its row) while this member
    # writes its manifest delta.
    store = WritesMeanwhile(tmp_path / "store", marker=f"/manifests/{SKU}/part-d-")
    _, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    _, _, other_member, other_ctx = trainstore_stage(
        tmp_path, compact_after_parts=16, store=FileStore(tmp_path / "store")
    )
    first = captioned(store, 1, photos=2)
    _write(writer, ctx, first, "a")
    maskless = _p1_without_a_mask(first)
    made_at = utc_now()
    newer = _envelope(first, "c", produced_at=made_at + timedelta(seconds=60))
    store.meanwhile = lambda: other_member.captioned(newer, other_ctx)
    writer.captioned(_envelope(maskless, "b", produced_at=made_at), ctx)
    assert store.meanwhile is None  # the newer captioning did come in between

    p1 = manifests.read_sku(SKU)["p1"]
    assert p1.status == "reference" and p1.mask is not None and p1.mask_sha256 is not None
    store.read_checked(manifests.key(p1.mask), p1.mask_sha256)
