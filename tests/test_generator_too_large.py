"""The generator's own PNG over ``SKUFORGE_MAX_IMAGE_BYTES``: it was stored and announced, counted as
generated, and then dead-lettered by the matting as ``too_large_bytes``, the cause named one stage
late. Now it is the variant's refusal: another photo draws it, and a SKU none can draw is the
generator's letter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.events import ImageGenerated
from services.generator.stage import GeneratorMetrics, handle_batch, variant_seed
from shared.errors import BadInput
from tests.support.captioning import captioned_sku
from tests.support.generation import (
    NOISE_MAX_IMAGE_BYTES,
    Noisy,
    arranged_for_noise,
    captioned_event,
    dead_letter_of,
)

VARIANTS = 2


def test_a_variant_over_the_byte_limit_is_drawn_from_another_photo(tmp_path: Path) -> None:
    store, ctx, generation = arranged_for_noise(tmp_path, VARIANTS)
    captioned = captioned_sku(store, 3, usable_photos=2)
    sku_id, base_seed = captioned.sku.sku_id, generation.generation_seed
    noisy = {variant_seed(sku_id, "p0", index, base_seed) for index in range(VARIANTS)}
    [outputs] = handle_batch(
        [captioned_event(captioned, "large")], ctx, generator=Noisy(noisy), generation=generation
    )

    assert not isinstance(outputs, BadInput), outputs
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    # Before: p0's variants were stored and announced, each over the limit every later stage reads under.
    assert [(g.variant_index, g.reference_photo_id) for g in generated] == [(0, "p1"), (1, "p1")]
    assert all(g.image.bytes <= NOISE_MAX_IMAGE_BYTES for g in generated)


def test_a_sku_whose_every_variant_is_over_the_byte_limit_is_a_letter_naming_the_setting(
    tmp_path: Path,
) -> None:
    store, ctx, generation = arranged_for_noise(tmp_path, VARIANTS)
    captioned = captioned_sku(store, 4, usable_photos=2)
    sku_id, base_seed = captioned.sku.sku_id, generation.generation_seed
    noisy = {
        variant_seed(sku_id, photo, index, base_seed) for photo in ("p0", "p1") for index in range(VARIANTS)
    }
    letter = dead_letter_of(
        captioned_event(captioned, "too-large"), ctx, generator=Noisy(noisy), generation=generation
    )

    assert letter.reason == "too_large_bytes" and "SKUFORGE_MAX_IMAGE_BYTES" in letter.detail
    assert not list(store.list_addressable("generated/"))  # no image of the SKU left in the store


def test_a_variant_over_the_byte_limit_is_counted_once_its_input_is_committed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, the refusal was only logged: an operator saw variants missing and no counter moving (it is
    # no Triton error, so skuforge_triton_errors_total{kind="refused"} stayed still too).
    store, ctx, generation = arranged_for_noise(tmp_path, VARIANTS)
    captioned = captioned_sku(store, 5, usable_photos=2)
    sku_id, base_seed = captioned.sku.sku_id, generation.generation_seed
    noisy = {variant_seed(sku_id, "p0", index, base_seed) for index in range(VARIANTS)}
    registry = CollectorRegistry()
    metrics = GeneratorMetrics(registry, ["skuforge_generator_composite"])
    event = captioned_event(captioned, "counted")

    def refused() -> float | None:
        name = "skuforge_generator_variants_refused_total"
        return registry.get_sample_value(name, {"reason": "too_large_bytes"})

    assert refused() == 0  # from 0, so rate() counts the first after a restart
    with caplog.at_level(logging.WARNING):
        [outputs] = handle_batch([event], ctx, generator=Noisy(noisy), generation=generation, metrics=metrics)
    assert isinstance(outputs, list) and len(outputs) == VARIANTS, outputs
    # p0's variants, each refused once and drawn from p1 instead.
    logged = [
        record
        for record in caplog.records
        if record.getMessage() == "variant refused, drawn from another photo"
        and record.reason == "too_large_bytes"  # type: ignore[attr-defined]
    ]
    assert logged and all(record.photo_id == "p0" for record in logged)  # type: ignore[attr-defined]
    assert refused() == 0  # nothing counted before the input is committed
    for action in ctx._take_actions(event):  # as the runtime does once the input is committed
        action()
    assert refused() == len(logged)
    triton_refused = metrics.triton_errors.labels("skuforge_generator_composite", "refused")
    assert triton_refused._value.get() == 0  # the model refused nothing
