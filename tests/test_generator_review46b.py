"""Generator review 46b: what the stage counts of the variants a SKU does not get.

A variant refused from every photo while the SKU's others were drawn was left out with only a warning
("variant refused, left out"): a SKU getting fewer than SKUFORGE_GENERATION_VARIANTS_PER_SKU images moved
no counter, so Prometheus could not see it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.events import ImageGenerated
from services.generator.client import unsendable
from services.generator.protocol import VariantRequest, VariantResult
from services.generator.stage import GeneratorMetrics, handle_batch, variant_seed
from shared.errors import BadInput
from shared.generation.composite import CompositeBackend
from tests.support.captioning import captioned_sku
from tests.support.generation import (
    InProcessGenerator,
    Noisy,
    arrange_generator,
    arranged_for_noise,
    captioned_event,
)

VARIANTS = 2
LEFT_OUT = "skuforge_generator_variants_left_out_total"


def test_a_variant_left_out_is_counted_by_reason_once_its_input_is_committed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, ctx, generation = arranged_for_noise(tmp_path, VARIANTS)
    captioned = captioned_sku(store, 6, usable_photos=2)
    sku_id, base_seed = captioned.sku.sku_id, generation.generation_seed
    # Variant 1 is over the limit from either photo; variant 0 is drawn.
    noisy = {variant_seed(sku_id, photo, 1, base_seed) for photo in ("p0", "p1")}
    registry = CollectorRegistry()
    metrics = GeneratorMetrics(registry, ["skuforge_generator_composite"])
    event = captioned_event(captioned, "left-out")

    def left_out(reason: str) -> float | None:
        return registry.get_sample_value(LEFT_OUT, {"reason": reason})

    assert left_out("too_large_bytes") == 0  # from 0, so rate() counts the first after a restart
    with caplog.at_level(logging.WARNING):
        [outputs] = handle_batch([event], ctx, generator=Noisy(noisy), generation=generation, metrics=metrics)
    assert isinstance(outputs, list), outputs
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    assert [g.variant_index for g in generated] == [0]  # the SKU got one image of two
    assert any(record.getMessage() == "variant refused, left out" for record in caplog.records)
    assert left_out("too_large_bytes") == 0  # nothing counted before the input is committed
    for action in ctx._take_actions(event):  # as the runtime does once the input is committed
        action()
    # Once per variant left out, not once per photo it was refused from.
    assert left_out("too_large_bytes") == 1


def test_a_sku_whose_every_variant_is_drawn_counts_none_left_out(tmp_path: Path) -> None:
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=VARIANTS, size_px=128)
    captioned = captioned_sku(store, 7, usable_photos=2)
    registry = CollectorRegistry()
    metrics = GeneratorMetrics(registry, ["skuforge_generator_composite"])
    event = captioned_event(captioned, "all-drawn")
    [outputs] = handle_batch(
        [event],
        ctx,
        generator=InProcessGenerator(CompositeBackend(None)),
        generation=generation,
        metrics=metrics,
    )
    assert isinstance(outputs, list) and len(outputs) == VARIANTS, outputs
    for action in ctx._take_actions(event):
        action()
    samples = [
        sample
        for family in registry.collect()
        if family.name == LEFT_OUT.removesuffix("_total")
        for sample in family.samples
        if sample.name == LEFT_OUT
    ]
    assert samples and all(sample.value == 0 for sample in samples)


class EmptyingGenerator(InProcessGenerator):
    """The compositor, but the variants of ``emptied_seeds`` reach the client with an empty mask, and
    come back as the Triton client answers such a variant without sending it (``unsendable``)."""

    def __init__(self, emptied_seeds: Collection[int]) -> None:
        super().__init__(CompositeBackend(None))
        self.emptied_seeds = emptied_seeds

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        results = super().generate(backend, variants)
        answers: list[VariantResult | BadInput] = []
        for variant, result in zip(variants, results, strict=True):
            emptied = dataclasses.replace(variant, mask=np.zeros((0, 0), np.uint8))
            not_sent = unsendable(backend, emptied) if variant.seed in self.emptied_seeds else None
            answers.append(result if not_sent is None else not_sent)
        return answers


def test_a_variant_the_client_does_not_send_is_no_triton_refusal(tmp_path: Path) -> None:
    # Before, a variant the client refused before sending (an empty reference or mask) was counted as
    # skuforge_triton_errors_total{kind="refused"}, though no Triton call was made.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=VARIANTS, size_px=128)
    captioned = captioned_sku(store, 8, usable_photos=2)
    sku_id, base_seed = captioned.sku.sku_id, generation.generation_seed
    emptied = {variant_seed(sku_id, "p0", 0, base_seed)}  # variant 0 from p0; p1 then draws it
    registry = CollectorRegistry()
    metrics = GeneratorMetrics(registry, ["skuforge_generator_composite"])
    event = captioned_event(captioned, "not-sent")
    [outputs] = handle_batch(
        [event], ctx, generator=EmptyingGenerator(emptied), generation=generation, metrics=metrics
    )
    assert isinstance(outputs, list) and len(outputs) == VARIANTS, outputs
    for action in ctx._take_actions(event):
        action()
    model = {"model": "skuforge_generator_composite"}
    assert registry.get_sample_value("skuforge_triton_errors_total", {**model, "kind": "refused"}) == 0
    not_sent = {"reason": "generation_refused"}
    assert registry.get_sample_value("skuforge_generator_variants_refused_total", not_sent) == 1
