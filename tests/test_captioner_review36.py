"""Captioner: the reference mask of an in-store photo is its largest blob, as the generator cuts it.

In a store the matting model marks the product and what stands beside it (the next apples of a crate,
a price tag): the captioner measured colours and shape on the largest blob, but stored every blob as
the product's mask, so the trainstore, the LoRA trainer and the console saw a "product" of several
objects, and the coverage check passed a photo whose product alone was a speck. The generator cuts
such photos to their largest blob (``shared.generation.backend.cluttered_cutout``); the captioner
now stores the same cut. On a plain background a second blob may be the product's own (a lid): kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from schemas.common import SkuMetadata
from schemas.events import CaptionedPhoto, ReferencePhoto, SkuCaptioned, SkuIngested
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from shared.config import load_settings
from shared.images import decode_mask
from shared.matting.session import MattingResult
from shared.store import FileStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import context

SIZE = 200
_ROWS, _COLUMNS = np.mgrid[0:SIZE, 0:SIZE]
APPLE = (_ROWS - 100) ** 2 + (_COLUMNS - 80) ** 2 <= 55**2  # the product
# The next apple on the shelf, or a lid on a plain backdrop.
NEIGHBOUR = (_ROWS - 100) ** 2 + (_COLUMNS - 170) ** 2 <= 22**2


class GivenMaskSession:
    """A matting model that answers ``masks`` for the photos, in turn."""

    model_id = "given-mask@test"
    ready = True  # answers every call

    def __init__(self, *masks: npt.NDArray[np.uint8]) -> None:
        self.masks = masks

    def predict_each(self, images: Sequence[Image.Image]) -> list[MattingResult]:
        return [
            MattingResult(
                confidence_map=mask.astype(np.float32) / 255.0,
                mask=mask,
                foreground_fraction=float(np.count_nonzero(mask)) / mask.size,
                mean_confidence=1.0,
            )
            for mask in self.masks[: len(images)]
        ]


def _photo(background: str) -> npt.NDArray[np.uint8]:
    """A green apple and a yellow neighbour, on white (``plain``) or on coloured noise (``store``)."""
    if background == "plain":
        pixels = np.full((SIZE, SIZE, 3), 250, dtype=np.uint8)
    else:
        pixels = np.random.default_rng(36).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[APPLE] = (120, 190, 60)
    pixels[NEIGHBOUR] = (240, 210, 40)
    return pixels


def _mask(*regions: tuple[slice, slice] | npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for region in regions:
        mask[region] = 255
    return mask


def _captioned(
    tmp_path: Path, background: str, predicted: npt.NDArray[np.uint8], **options: float
) -> tuple[CaptionedPhoto, npt.NDArray[np.bool_] | None]:
    """The SKU's one photo in ``sku.captioned``, and its stored mask (None when unusable)."""
    store = FileStore(tmp_path / "store")
    photo = ReferencePhoto(
        photo_id="p0",
        image=store.put_image("incoming/SKU-1/p0.png", _photo(background)),
        original_filename="p0.png",
    )
    # A second photo with the apple alone found, so the SKU is captioned whatever becomes of p0.
    clean = ReferencePhoto(
        photo_id="p1",
        image=store.put_image("incoming/SKU-1/p1.png", _photo("plain")),
        original_filename="p1.png",
    )
    sku = SkuMetadata(sku_id="SKU-1", name="Granny Smith", brand="Orchard", category="apple")
    models = CaptionerModels(
        session=GivenMaskSession(predicted, _mask(APPLE)),
        vlm=None,
        options=load_settings(CaptionerSettings, captioner_use_gpu=False, **options),
    )
    event = ingested_envelope(SkuIngested(sku=sku, photos=[photo, clean]))
    [emit] = handle(event, context(store, load_settings(store_uri=store.base_uri)), models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    captioned = emit.payload.photos[0]
    if captioned.mask is None:
        return captioned, None
    return captioned, decode_mask(store.read_verified(captioned.mask)) > 0


def test_an_in_store_photos_mask_is_stored_as_its_largest_blob(tmp_path: Path) -> None:
    captioned, stored = _captioned(tmp_path, "store", _mask(APPLE, NEIGHBOUR))

    assert captioned.usable and stored is not None
    assert captioned.plain_background is not None and captioned.plain_background < 0.7
    assert np.array_equal(stored, _mask(APPLE) > 0)
    # The caption was already of the largest blob; the mask now says the same thing.
    assert captioned.colours[0] == "green" and "yellow" not in captioned.colours


def test_a_plain_background_photos_second_blob_is_kept(tmp_path: Path) -> None:
    captioned, stored = _captioned(tmp_path, "plain", _mask(APPLE, NEIGHBOUR))

    assert captioned.usable and stored is not None
    assert captioned.plain_background is not None and captioned.plain_background > 0.9
    assert np.array_equal(stored, _mask(APPLE, NEIGHBOUR) > 0)


def test_an_in_store_photo_whose_largest_blob_is_a_speck_finds_no_product(tmp_path: Path) -> None:
    # Ten scattered scraps cover 1% of the photo between them, over the 0.5% a product needs; the
    # largest alone covers 0.1%, which the generator would have cut and pasted on every scene.
    scraps = [(slice(20 * row + 5, 20 * row + 11), slice(10, 17)) for row in range(9)]
    speck = (slice(185, 192), slice(100, 108))  # the largest: 7 x 8 px
    predicted = _mask(speck, *scraps)
    assert np.count_nonzero(predicted) / predicted.size > 0.005

    captioned, stored = _captioned(tmp_path, "store", predicted)

    assert not captioned.usable and stored is None
    assert captioned.unusable_reason == "no_product_found"
