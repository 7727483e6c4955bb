"""Cut-outs of a SKU with no photo on a plain background, pinned where they went wrong.

A real-photo walk (GroceryStoreDataset train photos of Granny Smith, in-store only): one photo's mask
was a chain of four apples plus a separate price-tag fragment, and every composite showed four
floating apples and a price-tag scrap, which the gate accepted (its expected mask is that cut-out).
Another photo of the same SKU held one clean apple. Now a cluttered photo's mask keeps its largest
blob only, and the photos whose blob is one solid object are drawn from first.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.events import ImageGenerated, SkuCaptioned
from services.generator.protocol import VariantRequest, VariantResult
from services.generator.stage import handle_batch
from shared.arith.masks import connected_components, solidity
from shared.errors import BadInput
from shared.generation.backend import ONE_OBJECT_MIN_SOLIDITY, cluttered_cutout, one_object_photos
from shared.generation.composite import CompositeBackend
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.generation import InProcessGenerator, arrange_generator, captioned_event, with_mask

SIDE_PX = 192


def disc(centre: tuple[int, int] = (90, 90), radius_px: int = 40) -> np.ndarray:
    """One round product (an apple), 0/255."""
    y, x = np.ogrid[:SIDE_PX, :SIDE_PX]
    inside = (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius_px**2
    return np.where(inside, 255, 0).astype(np.uint8)


def disc_and_price_tag() -> np.ndarray:
    """An apple and, apart from it, a price-tag fragment: two blobs."""
    mask = disc()
    mask[160:172, 20:60] = 255
    return mask


def chain() -> np.ndarray:
    """Apples in an L, as one blob: a shape no single product has."""
    mask = np.zeros((SIDE_PX, SIDE_PX), np.uint8)
    mask[20:170, 20:60] = 255
    mask[130:170, 20:170] = 255
    return mask


def blobs(mask: np.ndarray) -> int:
    """The number of 8-connected blobs of a 0/255 mask."""
    _, _, _, labels = connected_components(mask > 0, diagonal=True)
    return int(labels.max()) + 1 if labels.size else 0


class RecordingGenerator(InProcessGenerator):
    """The composite backend in this process, keeping each request's mask as the generator sent it."""

    def __init__(self) -> None:
        super().__init__(CompositeBackend(None))
        self.masks: list[np.ndarray] = []

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        self.masks.extend(variant.mask for variant in variants)
        return super().generate(backend, variants)


def in_store(captioned: SkuCaptioned, plain_background: float) -> SkuCaptioned:
    """``captioned`` with every photo measured ``plain_background`` plain."""
    photos = [photo.model_copy(update={"plain_background": plain_background}) for photo in captioned.photos]
    return captioned.model_copy(update={"photos": photos})


# --- the arithmetic ------------------------------------------------------------------------------


def test_a_cluttered_photos_cutout_keeps_its_largest_blob_only() -> None:
    cut = cluttered_cutout(disc_and_price_tag())
    assert blobs(cut) == 1
    assert np.array_equal(cut, disc())  # the apple whole, the tag gone
    assert not cluttered_cutout(np.zeros((8, 8), np.uint8)).any()  # nothing stays nothing


def test_solidity_tells_one_round_product_from_a_chain() -> None:
    assert solidity(disc() > 0) >= ONE_OBJECT_MIN_SOLIDITY
    assert solidity(chain() > 0) < ONE_OBJECT_MIN_SOLIDITY
    assert solidity(np.zeros((8, 8), bool)) == 0.0


def test_photos_whose_cutout_is_one_object_are_drawn_from_first(tmp_path: Path) -> None:
    p0, p1, p2 = in_store(captioned_sku(FileStore(tmp_path), 3, usable_photos=3), 0.3).photos
    # The chain loses to the disc, whatever the order; the photos that pass keep theirs.
    masks = {"p0": chain(), "p1": disc(), "p2": disc((100, 100), 30)}
    assert one_object_photos([p0, p1, p2], masks) == [p1, p2]
    # None passes: all of them, rather than none.
    assert one_object_photos([p0, p1], {"p0": chain(), "p1": chain()}) == [p0, p1]
    # A photo whose mask was not read is not one to prefer.
    assert one_object_photos([p0, p1], {"p0": chain()}) == [p0, p1]


# --- the generator -------------------------------------------------------------------------------


def test_a_sku_of_in_store_photos_is_cut_from_its_one_object_photo_without_fragments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=4, size_px=96, min_plain_background=None
    )
    captioned = in_store(captioned_sku(store, 2), 0.3)
    captioned = with_mask(store, captioned, "p0", chain())
    captioned = with_mask(store, captioned, "p1", disc_and_price_tag())
    generator = RecordingGenerator()
    with caplog.at_level(logging.WARNING):
        events = [captioned_event(captioned, "granny")]
        [outputs] = handle_batch(events, ctx, generator=generator, generation=generation)

    assert isinstance(outputs, list), outputs
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    # Before, the chain (p0) drew every second variant, and p1's cut-out carried its price tag.
    assert [g.reference_photo_id for g in generated] == ["p1"] * 4
    assert [blobs(mask) for mask in generator.masks] == [1] * 4
    for item in generated:
        expected = np.asarray(Image.open(io.BytesIO(store.read_verified(item.expected_mask))))
        assert blobs(expected) == 1
    # The warning still says the SKU is cut from in-store photos, and names the ones drawn from.
    [said] = [r for r in caplog.records if r.getMessage().startswith("no photo on a plain background")]
    assert said.photos == ["p0", "p1"]  # type: ignore[attr-defined]
    assert said.cut_from == ["p1"]  # type: ignore[attr-defined]


def test_in_store_photos_none_of_one_object_are_all_drawn_from_each_as_its_largest_blob(
    tmp_path: Path,
) -> None:
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=4, size_px=96, min_plain_background=None
    )
    two_chains = chain()
    two_chains[20:40, 150:180] = 255  # a scrap apart from the chain
    captioned = in_store(captioned_sku(store, 2), 0.3)
    captioned = with_mask(store, captioned, "p0", two_chains)
    captioned = with_mask(store, captioned, "p1", chain())
    generator = RecordingGenerator()
    events = [captioned_event(captioned, "heaps")]
    [outputs] = handle_batch(events, ctx, generator=generator, generation=generation)

    assert isinstance(outputs, list), outputs
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    assert [g.reference_photo_id for g in generated] == ["p0", "p1", "p0", "p1"]
    assert [blobs(mask) for mask in generator.masks] == [1] * 4


def test_a_plain_background_photos_mask_is_sent_as_it_is(tmp_path: Path) -> None:
    # On a catalogue photo a second blob is the product's own (a lid, a second item of a pack): kept.
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=2, size_px=96, min_plain_background=None
    )
    captioned = in_store(captioned_sku(store, 2, usable_photos=1), 0.95)
    captioned = with_mask(store, captioned, "p0", disc_and_price_tag())
    generator = RecordingGenerator()
    events = [captioned_event(captioned, "catalogue")]
    [outputs] = handle_batch(events, ctx, generator=generator, generation=generation)

    assert isinstance(outputs, list), outputs
    assert [blobs(mask) for mask in generator.masks] == [2, 2]
