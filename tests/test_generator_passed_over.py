"""The generator's in-store photos passed over as not one object, read again for a variant refused from
every photo of one object (``SkuDraws.redraw``): one gone from the store by then raised
``object_missing`` there, and the whole SKU went to the DLQ, the variants drawn fine with it, though
such a photo is only a fall-back."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from schemas.events import ImageGenerated
from services.generator.protocol import VariantRequest, VariantResult
from services.generator.stage import handle_batch, variant_seed
from shared.errors import BadInput
from shared.generation.composite import CompositeBackend
from shared.store import ObjectStore
from tests.support.generation import RefusingGenerator, arrange_generator, captioned_event, dead_letter_of
from tests.support.in_store import chain, hair, in_store

VARIANTS = 3


class Deleting(RefusingGenerator):
    """The compositor, and an object deleted from the store as the first round is drawn: what a
    photo's removal while the SKU was in the generator looks like."""

    def __init__(self, store: ObjectStore, uri: str) -> None:
        super().__init__(CompositeBackend(None))
        self.store, self.uri = store, uri

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        if self.store.exists(self.store.key_for(self.uri)):
            self.store.delete(self.store.key_for(self.uri))
        return super().generate(backend, variants)


def test_a_passed_over_photo_gone_when_read_again_leaves_its_variants_to_the_other_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=VARIANTS, size_px=128, min_plain_background=None
    )
    # p0 alone is one object, and refused for every variant; p1 and p2 are passed over, and p2 is gone
    # when variant 1, its turn, is drawn again.
    captioned = in_store(store, 38, [hair(), chain(), chain()])
    gone = captioned.photos[2]
    generator = Deleting(store, gone.image.uri)
    with caplog.at_level(logging.WARNING):
        [outputs] = handle_batch(
            [captioned_event(captioned, "gone")], ctx, generator=generator, generation=generation
        )

    assert not isinstance(outputs, BadInput), outputs  # before: object_missing, for all three variants
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    sku_id, base_seed = captioned.sku.sku_id, generation.generation_seed
    assert [(g.variant_index, g.reference_photo_id, g.seed) for g in generated] == [
        (index, "p1", variant_seed(sku_id, "p1", index, base_seed)) for index in range(VARIANTS)
    ]
    left_out = [r for r in caplog.records if r.getMessage().startswith("photo unreadable")]
    assert [(r.photo_id, r.reason) for r in left_out] == [("p2", "object_missing")]  # type: ignore[attr-defined]


def test_a_sku_refused_from_every_photo_but_one_gone_when_read_again_is_a_letter_a_replay_may_cure(
    tmp_path: Path,
) -> None:
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=VARIANTS, size_px=128, min_plain_background=None
    )
    captioned = in_store(store, 39, [hair(), chain()])
    generator = Deleting(store, captioned.photos[1].image.uri)
    letter = dead_letter_of(
        captioned_event(captioned, "all-gone"), ctx, generator=generator, generation=generation
    )

    # Not generation_refused, which a replay leaves: the photo back, it draws every variant.
    assert letter.reason == "object_missing" and "'p1' could not be read (object_missing" in letter.detail
    # The gone photo's class too: the letter was rebuilt as a plain BadInput, error_class BadInput.
    assert letter.error_class == "ObjectMissing"
