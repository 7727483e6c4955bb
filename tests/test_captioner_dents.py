"""A carton's reference mask with a bite out of it is filled back to the carton's outline.

A user's Tropicana Mandarin carton: its catalogue photo's white front face on the white backdrop was
dropped by the matting model (19% of the carton missing), so every composite pasted a carton with a
bite out of it, and the gate passed them: the expected mask inherits the same bite. A carton, box or
can has a convex outline from every side, so on a plain-background photo a big dent in its mask is a
part the model missed. Produce, cluttered photos, exact transparency masks and small dents (a cap's
shoulders) are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from schemas.common import SkuMetadata
from schemas.events import CaptionedPhoto, ReferencePhoto, SkuCaptioned, SkuIngested
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from shared.captioning.attributes import fill_concavities
from shared.config import load_settings
from shared.images import decode_mask
from shared.matting.session import MattingResult
from shared.store import FileStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import context

SIZE = 192
CARTON = (slice(30, 170), slice(50, 130))  # rows, columns
BITE = (slice(60, 140), slice(50, 85))  # the white part of the front face, open to the left edge


def _carton_photo(background: str) -> npt.NDArray[np.uint8]:
    """A carton whose left part is white, on white (``plain``) or on coloured noise (``cluttered``)."""
    rng = np.random.default_rng(5)
    if background == "plain":
        pixels = np.full((SIZE, SIZE, 3), 250, dtype=np.uint8)
    else:
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[CARTON] = (230, 120, 20)
    pixels[BITE] = (246, 246, 244)
    return pixels


def _carton_mask() -> npt.NDArray[np.bool_]:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[CARTON] = True
    return mask


def _bitten_mask() -> npt.NDArray[np.uint8]:
    """What the model predicted: the carton without its white part."""
    mask = _carton_mask()
    mask[BITE] = False
    return mask.astype(np.uint8) * np.uint8(255)


class BittenSession:
    """A matting model that drops the carton's white part, as the committed one does on Tropicana."""

    model_id = "bitten@test"
    ready = True  # answers every call

    def __init__(self) -> None:
        self.calls = 0

    def predict_each(self, images: Sequence[Image.Image]) -> list[MattingResult]:
        self.calls += len(images)
        mask = _bitten_mask()
        return [
            MattingResult(
                confidence_map=mask.astype(np.float32) / 255.0,
                mask=mask,
                foreground_fraction=float(np.count_nonzero(mask)) / mask.size,
                mean_confidence=1.0,
            )
            for _ in images
        ]


def _captioned(
    tmp_path: Path, *, category: str, background: str = "plain", transparency: bool = False, **options: float
) -> tuple[npt.NDArray[np.bool_], CaptionedPhoto]:
    """The stored mask of the SKU's one photo, and its entry in ``sku.captioned``."""
    store = FileStore(tmp_path / "store")
    photo = ReferencePhoto(
        photo_id="p0",
        image=store.put_image("incoming/SKU-1/p0.png", _carton_photo(background)),
        original_filename="p0.png",
        mask=store.put_image("masks/transparency/SKU-1/p0.png", _bitten_mask()) if transparency else None,
    )
    sku = SkuMetadata(sku_id="SKU-1", name="Mandarin Morning", brand="Tropicana", category=category)
    event = ingested_envelope(SkuIngested(sku=sku, photos=[photo]))
    models = CaptionerModels(
        session=BittenSession(),
        vlm=None,
        options=load_settings(CaptionerSettings, captioner_use_gpu=False, **options),
    )
    [emit] = handle(event, context(store, load_settings(store_uri=store.base_uri)), models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    [captioned] = emit.payload.photos
    assert captioned.usable and captioned.mask is not None
    return decode_mask(store.read_verified(captioned.mask)) > 0, captioned


def _iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float(np.count_nonzero(a & b)) / float(np.count_nonzero(a | b))


def test_a_bitten_carton_mask_on_a_plain_background_is_filled_to_the_carton(tmp_path: Path) -> None:
    mask, captioned = _captioned(tmp_path, category="juice carton")

    assert _iou(mask, _carton_mask()) == pytest.approx(1.0)
    # Measured again on the filled mask: the white face is part of the product's colours now.
    assert "white" in captioned.colours and "white" in captioned.caption
    assert captioned.plain_background is not None and captioned.plain_background > 0.99


@pytest.mark.parametrize(
    ("case", "category", "background", "transparency", "options"),
    [
        ("produce has no convex outline", "fresh fruit", "plain", False, {}),
        ("in a store a dent may be a hand in front", "juice carton", "cluttered", False, {}),
        ("a cut-out's transparency is exact", "juice carton", "plain", True, {}),
        ("switched off", "juice carton", "plain", False, {"captioner_fill_dents_share": 0.0}),
    ],
)
def test_other_masks_are_stored_as_predicted(
    tmp_path: Path,
    case: str,
    category: str,
    background: str,
    transparency: bool,
    options: dict[str, float],
) -> None:
    mask, captioned = _captioned(
        tmp_path, category=category, background=background, transparency=transparency, **options
    )

    assert np.array_equal(mask, _bitten_mask() > 0), case
    assert "white" not in captioned.colours, case


def test_small_dents_such_as_a_caps_shoulders_are_left() -> None:
    carton = np.zeros((200, 120), dtype=bool)
    carton[40:190, 20:100] = True
    carton[28:40, 52:68] = True  # the cap
    bitten = carton.copy()
    bitten[80:150, 20:50] = False  # a white face the model dropped

    filled, added = fill_concavities(bitten, 0.02)

    assert np.array_equal(filled[40:], carton[40:])  # the bite is back
    assert np.array_equal(filled[:40], bitten[:40])  # the shoulders beside the cap are not filled
    assert added == pytest.approx(70 * 30 / np.count_nonzero(bitten))
    assert fill_concavities(carton, 0.02)[1] == 0.0
    assert not fill_concavities(np.zeros((4, 4), dtype=bool), 0.02)[0].any()


def test_a_logo_apart_from_the_carton_is_not_joined_to_it_across_the_backdrop() -> None:
    # Review: the hull of the whole mask spanned a carton and a badge in the corner, and the backdrop
    # between them (71% of the mask) was "filled".
    mask = np.zeros((200, 200), dtype=bool)
    mask[40:180, 70:130] = True  # the carton
    mask[5:15, 175:195] = True  # a badge the matting kept
    bitten = mask.copy()
    bitten[80:140, 70:95] = False

    filled, added = fill_concavities(bitten, 0.02)

    assert np.array_equal(filled, mask)
    assert added == pytest.approx(60 * 25 / np.count_nonzero(bitten))


def test_a_carton_split_in_two_by_a_dropped_white_band_is_whole_again() -> None:
    # Review of the largest-blob hull: a white label band across the carton leaves two blobs; the
    # hull of the larger one alone did not reach the band.
    carton = np.zeros((200, 140), dtype=bool)
    carton[30:170, 30:110] = True
    split = carton.copy()
    split[80:110, 30:110] = False  # the band, the whole width

    filled, added = fill_concavities(split, 0.02)

    assert np.array_equal(filled, carton)
    assert added == pytest.approx(30 * 80 / np.count_nonzero(split))
