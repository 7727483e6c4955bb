"""Generator faults where part of a batch fails, each pinned where an operator would meet it.

One photo whose mask the compositor cannot place, or that cannot be read, no longer sends the whole
SKU to the DLQ nor costs it images: its other photos draw the variants, the refusals are logged and
counted. More requests in
flight than Triton holds no longer livelock the stage: the variants drawn before the refusal are kept
for the retry, and the refusal names the settings to change.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.common import ImageRef
from schemas.envelope import derive_id
from schemas.events import ImageGenerated, SkuCaptioned
from services.generator.client import GeneratorFailed, GeneratorUnavailable, TritonGenerator, refusal
from services.generator.protocol import VariantRequest, VariantResult
from services.generator.stage import GeneratorMetrics, handle_batch, plan_variants, variant_seed
from shared.config import ConfigError, load_settings
from shared.errors import BadInput
from shared.generation.backend import GenerationBackend, GenerationRequest
from shared.generation.composite import CompositeBackend
from shared.generation.settings import GenerationSettings
from shared.observability import StageMetrics
from shared.runtime import Context, Emit
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.generation import (
    InProcessGenerator,
    RefusingGenerator,
    arrange_generator,
    captioned_event,
    dead_letter_of,
    speckles,
    triton_variant,
    with_mask,
)
from tests.support.triton import PoisonedComposite, TritonServerProcess, poisoned_triton


def test_one_photo_the_compositor_cannot_place_leaves_the_other_photos_variants(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=128)
    captioned = with_mask(store, captioned_sku(store, 3), "p1", speckles())
    event = captioned_event(captioned, "speckled")
    metrics = GeneratorMetrics(CollectorRegistry(), ["skuforge_generator_composite"])
    generator = RefusingGenerator(CompositeBackend(None))
    with caplog.at_level(logging.WARNING):
        [outputs] = handle_batch([event], ctx, generator=generator, generation=generation, metrics=metrics)

    # Before, the refusal of p1 dead-lettered the SKU: no image at all, though p0 is fine; then the
    # SKU got 3 of the 4 images asked for. Now p0 draws the refused variant, with p0's seed for it.
    assert isinstance(outputs, list), outputs
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    # Where a copy lands is drawn per variant: p1's variant 3 is drawn large enough to place.
    assert [(g.variant_index, g.reference_photo_id) for g in generated] == [
        (0, "p0"),
        (1, "p0"),
        (2, "p0"),
        (3, "p1"),
    ]
    base_seed = generation.generation_seed
    assert [g.seed for g in generated] == [
        variant_seed(captioned.sku.sku_id, g.reference_photo_id, g.variant_index, base_seed)
        for g in generated
    ]
    # The refusal is named, with its photo, its reason and the photo that drew it, and counted.
    redrawn = [
        (record.photo_id, record.variant_index, record.reason, record.drawn_from)  # type: ignore[attr-defined]
        for record in caplog.records
        if record.getMessage() == "variant refused, drawn from another photo"
    ]
    assert redrawn == [("p1", 1, "generation_refused", "p0")]
    for action in ctx._take_actions(event):  # as the runtime does once the input is committed
        action()
    assert metrics.triton_errors.labels("skuforge_generator_composite", "refused")._value.get() == 1
    # Same SKU, same seed: the same images.
    [again] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(again, list)
    assert [emit.payload.image for emit in again] == [g.image for g in generated]  # type: ignore[attr-defined]

    # A SKU none of whose variants is drawn still goes to the DLQ, with the reason: here both masks
    # are empty (as the captioner lets through with SKUFORGE_CAPTIONER_MIN_MASK_FRACTION=0).
    empty = np.zeros((192, 192), np.uint8)
    both = with_mask(store, with_mask(store, captioned, "p0", empty), "p1", empty)
    event = event.model_copy(update={"payload": both, "event_id": derive_id("test", "all-speckled")})
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, BadInput) and outputs.reason == "generation_refused"


def with_image(captioned: SkuCaptioned, photo_id: str, **update: object) -> SkuCaptioned:
    """``captioned`` with ``photo_id``'s image reference changed by ``update``."""
    photos = [
        photo.model_copy(update={"image": photo.image.model_copy(update=update)})
        if photo.photo_id == photo_id
        else photo
        for photo in captioned.photos
    ]
    return captioned.model_copy(update={"photos": photos})


@pytest.mark.parametrize("fault", ["dimension_mismatch", "checksum_mismatch", "not_an_image"])
def test_one_photo_that_cannot_be_read_for_good_leaves_the_other_photos_variants(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """A mask of another size than its photo, a photo whose bytes are not the ones its sha256 names, a
    mask that is no image: a replay cannot cure any of them, yet the whole SKU was dead-lettered, its
    other photo's variants with it."""
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=64)
    captioned = captioned_sku(store, 3)
    if fault == "dimension_mismatch":
        captioned = with_mask(store, captioned, "p1", np.full((100, 120), 255, np.uint8))
    elif fault == "checksum_mismatch":
        captioned = with_image(captioned, "p1", sha256="0" * 64)
    else:  # a mask whose bytes are what its sha256 says, but no image
        stored = store.put_bytes(f"masks/reference/{captioned.sku.sku_id}/p1-cut.png", b"\x89PNG cut short")
        photos = [
            photo.model_copy(update={"mask": ImageRef(**stored.model_dump(), width=192, height=192)})
            if photo.photo_id == "p1"
            else photo
            for photo in captioned.photos
        ]
        captioned = captioned.model_copy(update={"photos": photos})
    event = captioned_event(captioned, "unreadable", fault)
    metrics = GeneratorMetrics(CollectorRegistry(), ["skuforge_generator_composite"])
    generator = RefusingGenerator(CompositeBackend(None))
    with caplog.at_level(logging.WARNING):
        [outputs] = handle_batch([event], ctx, generator=generator, generation=generation, metrics=metrics)

    assert isinstance(outputs, list), outputs
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    # It got 2 of the 4 images asked for: p1's turns were left out, not taken by p0.
    assert [(g.variant_index, g.reference_photo_id) for g in generated] == [(i, "p0") for i in range(4)]
    assert [g.seed for g in generated] == [
        variant_seed(captioned.sku.sku_id, "p0", index, generation.generation_seed) for index in range(4)
    ]
    left_out = [
        (record.photo_id, record.reason)  # type: ignore[attr-defined]
        for record in caplog.records
        if record.getMessage() == "photo unreadable, its variants drawn from the other photos"
    ]
    assert left_out == [("p1", fault)]
    for action in ctx._take_actions(event):  # as the runtime does once the input is committed
        action()
    assert metrics.photos_left_out.labels(fault)._value.get() == 1

    # With no photo left to draw from, the SKU still goes to the DLQ with the reason.
    both = with_image(with_image(captioned, "p0", sha256="0" * 64), "p1", sha256="0" * 64)
    event = event.model_copy(update={"payload": both, "event_id": derive_id("test", "none", fault)})
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, BadInput) and outputs.reason == "checksum_mismatch"


def test_a_photo_beyond_the_variants_asked_for_takes_the_turn_of_one_that_cannot_be_read(
    tmp_path: Path,
) -> None:
    # Two variants, three photos, the first altered in the store: the third, never read when every
    # photo is fine, draws the variant, rather than the SKU getting one image.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=2, size_px=64)
    captioned = with_image(captioned_sku(store, 3, usable_photos=3), "p0", sha256="0" * 64)
    event = captioned_event(captioned, "third-photo")
    generator = RefusingGenerator(CompositeBackend(None))
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, list), outputs
    assert [(emit.payload.variant_index, emit.payload.reference_photo_id) for emit in outputs] == [  # type: ignore[attr-defined]
        (0, "p1"),
        (1, "p2"),
    ]


def test_a_letter_for_every_variant_refused_names_the_photo_that_could_not_be_read(tmp_path: Path) -> None:
    # p1 cannot be read for good and the model refuses every variant of p0: the letter said only
    # generation_refused, and whoever fixed p0's mask and replayed it lost p1's variants unawares.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=64)
    captioned = with_mask(store, captioned_sku(store, 3), "p0", np.zeros((192, 192), np.uint8))
    captioned = with_image(captioned, "p1", sha256="0" * 64)
    event = captioned_event(captioned, "refused-and-unreadable")
    generator = RefusingGenerator(CompositeBackend(None))
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, BadInput) and outputs.reason == "generation_refused"
    assert "composite refused variant seed" in outputs.detail  # the refusal itself comes first
    assert "photo 'p1' could not be read (checksum_mismatch: " in outputs.detail


def test_a_photo_missing_when_a_variant_is_redrawn_is_dead_lettered_as_object_missing(tmp_path: Path) -> None:
    # p0's mask is of another size (left out for good), p1's empty (refused), p2 not in the store (read
    # only when the variant is drawn again): the letter naming p0 was rebuilt as a plain BadInput, and
    # said error_class BadInput for an object_missing.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=1, size_px=64)
    captioned = with_mask(
        store, captioned_sku(store, 3, usable_photos=3), "p0", np.full((100, 120), 255, np.uint8)
    )
    captioned = with_mask(store, captioned, "p1", np.zeros((192, 192), np.uint8))
    store.delete(store.key_for(captioned.photos[2].image.uri))
    event = captioned_event(captioned, "redrawn-from-a-missing-photo")
    generator = RefusingGenerator(CompositeBackend(None))
    letter = dead_letter_of(event, ctx, generator=generator, generation=generation)
    assert (
        letter.reason == "object_missing"
        and "photo 'p0' could not be read (dimension_mismatch" in letter.detail
    )
    assert letter.error_class == "ObjectMissing"


def test_a_photo_refused_for_every_variant_spreads_them_over_the_other_photos(tmp_path: Path) -> None:
    # p0's mask is empty: the model refuses every variant drawn from it. Its variants 0 and 4 both went
    # to p1, the next photo in turn, which drew 4 of the 8 images while p2 and p3 drew 2 each.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=8, size_px=64)
    captioned = with_mask(
        store, captioned_sku(store, 3, usable_photos=4), "p0", np.zeros((192, 192), np.uint8)
    )
    event = captioned_event(captioned, "spread")
    generator = RefusingGenerator(CompositeBackend(None))
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, list), outputs
    drawn_from = {emit.payload.variant_index: emit.payload.reference_photo_id for emit in outputs}  # type: ignore[attr-defined]
    assert sorted(drawn_from) == list(range(8))
    assert (drawn_from[0], drawn_from[4]) == ("p1", "p2")
    assert Counter(drawn_from.values()) == {"p1": 3, "p2": 3, "p3": 2}


class CountingGenerator(RefusingGenerator):
    """As ``RefusingGenerator``, noting how many variants each call to Triton carried."""

    def __init__(self, *backends: GenerationBackend) -> None:
        super().__init__(*backends)
        self.calls: list[int] = []

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        self.calls.append(len(variants))
        return super().generate(backend, variants)


def test_a_batch_asks_triton_again_at_most_once_per_photo_of_its_skus(tmp_path: Path) -> None:
    # Each round of redraws is another round trip to Triton, one after the other: a SKU whose photos
    # are all refused must stop once every photo was tried, and the batch's SKUs share the rounds.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=64)
    empty = np.zeros((192, 192), np.uint8)
    all_refused = captioned_sku(store, 1, usable_photos=3)
    for photo_id in ("p0", "p1", "p2"):
        all_refused = with_mask(store, all_refused, photo_id, empty)
    skus = [all_refused, with_mask(store, captioned_sku(store, 2), "p0", empty), captioned_sku(store, 3)]
    events = [captioned_event(captioned, "rounds", captioned.sku.sku_id) for captioned in skus]
    generator = CountingGenerator(CompositeBackend(None))
    outputs = handle_batch(events, ctx, generator=generator, generation=generation)

    # Round 1 draws all 12 variants, round 2 the 4 of the first SKU and the 2 of p0 of the second,
    # round 3 the first SKU's from its last photo; then it is refused, its letter says why.
    assert generator.calls == [12, 6, 4]
    refused, *served = outputs
    assert isinstance(refused, BadInput) and refused.reason == "generation_refused"
    assert [len(output) for output in served if isinstance(output, list)] == [4, 4]


def test_a_photo_missing_from_the_store_still_dead_letters_the_whole_sku(tmp_path: Path) -> None:
    # Left out, its variants would be lost once the photo is put back; the letter's replay makes them.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=64)
    captioned = captioned_sku(store, 3)
    # p0 cannot be read for good, p1 is missing: the replayable reason is the letter's.
    captioned = with_image(captioned, "p0", sha256="0" * 64)
    captioned = with_image(captioned, "p1", uri=store.uri_for("images/gone.png"))
    event = captioned_event(captioned, "missing")
    generator = RefusingGenerator(CompositeBackend(None))
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, BadInput) and outputs.reason == "object_missing"


def test_a_photo_missing_at_first_read_is_dead_lettered_naming_the_photos_left_out(tmp_path: Path) -> None:
    # p0 cannot be read for good, p1 is missing when first read: its ObjectMissing left the SKU's
    # draws straight away, and the letter did not name p0, which a replay then left out unawares.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=64)
    captioned = with_image(captioned_sku(store, 3), "p0", sha256="0" * 64)
    captioned = with_image(captioned, "p1", uri=store.uri_for("images/gone.png"))
    event = captioned_event(captioned, "missing-at-first-read")
    generator = RefusingGenerator(CompositeBackend(None))
    letter = dead_letter_of(event, ctx, generator=generator, generation=generation)
    assert letter.reason == "object_missing" and "images/gone.png" in letter.detail
    assert "photo 'p0' could not be read (checksum_mismatch: " in letter.detail
    assert letter.error_class == "ObjectMissing"


def test_a_sku_no_photo_of_which_can_be_read_is_dead_lettered_naming_every_one(tmp_path: Path) -> None:
    # Only the first unreadable photo was raised: once it was fixed, a replay left the other out unawares.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=64)
    captioned = with_image(captioned_sku(store, 3), "p0", sha256="0" * 64)
    captioned = with_image(captioned, "p1", sha256="1" * 64)
    event = captioned_event(captioned, "none-readable")
    generator = RefusingGenerator(CompositeBackend(None))
    letter = dead_letter_of(event, ctx, generator=generator, generation=generation)
    assert letter.reason == "checksum_mismatch" and letter.error_class == "ChecksumMismatch"
    assert "photo 'p1' could not be read (checksum_mismatch: " in letter.detail


class AdapterMissingGenerator:
    """Draws nothing useful: refuses the second variant as an adapter not registered yet."""

    def forget(self, backend: str, variants: Sequence[VariantRequest]) -> None:
        """Nothing is kept between calls here."""

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        image, mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
        drawn = VariantResult(image, mask, "{}", None, "composite-v1")
        return [
            BadInput("unknown_adapter", "no adapter 'cola-v1' yet") if index == 1 else drawn
            for index in range(len(variants))
        ]


def test_a_refusal_a_replay_may_cure_still_dead_letters_the_whole_sku(tmp_path: Path) -> None:
    # Left out, the variant of an adapter registered later would be lost; the letter brings it back.
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=3, size_px=64, min_plain_background=None
    )
    captioned = captioned_sku(store, 4)
    event = captioned_event(captioned, "curable")
    [outputs] = handle_batch([event], ctx, generator=AdapterMissingGenerator(), generation=generation)
    assert isinstance(outputs, BadInput) and outputs.reason == "unknown_adapter"


class UnloadableAdapterGenerator(InProcessGenerator):
    """Composites drawn in this process; every diffusion variant refused as the Triton client returns
    the refusal of the adapter the SKU gets (``error``, the server's text). ``calls`` counts the variants
    of each call."""

    def __init__(self, error: str) -> None:
        super().__init__(CompositeBackend(None))
        self.error = error
        self.calls: list[tuple[str, int]] = []

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        self.calls.append((backend, len(variants)))
        if backend == "composite":
            return super().generate(backend, variants)
        return [refusal(self.error, f"diffusion refused variant seed {variant.seed}") for variant in variants]


@pytest.mark.parametrize(
    ("reason", "detail"),
    [
        ("adapter_unloadable", "adapter 'cola-v' does not fit this model (base 'sdxl')"),
        # Its weights damaged in the registry: before, checksum_mismatch, a photo's reason.
        ("adapter_checksum_mismatch", "adapter 'cola-v' is damaged in the registry: register it again"),
    ],
)
def test_a_variant_refused_for_its_adapter_is_not_drawn_from_the_other_photos_and_keeps_its_letter(
    tmp_path: Path, reason: str, detail: str
) -> None:
    # The adapter the SKU's series gets does not fit the model: any photo draws the same refusal. Each
    # was tried in turn (a round trip and an adapter load per photo), then the diffusion variants were
    # left out and the composites committed: once the adapter was fixed, no letter brought them back.
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=4, size_px=64, backend_mix={"composite": 1, "diffusion": 1}
    )
    event = captioned_event(captioned_sku(store, 5, usable_photos=3), "unfit-adapter")
    generator = UnloadableAdapterGenerator(f"BadInput: {reason}: {detail}")
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)

    assert isinstance(outputs, BadInput) and outputs.reason == reason, outputs
    assert detail in outputs.detail
    assert generator.calls == [("composite", 2), ("diffusion", 2)]  # one round: no photo would do


class MeetingGenerator(InProcessGenerator):
    """Draws every variant with the composite backend, in this process (only the calls are on trial):
    the call of each backend waits, up to ``wait_s``, for the other's to begin. ``met`` names the
    backends whose call saw the other's begin."""

    def __init__(self, wait_s: float = 30.0) -> None:
        super().__init__(CompositeBackend(None))
        self.wait_s = wait_s
        self.begun = {"composite": threading.Event(), "diffusion": threading.Event()}
        self.met: list[str] = []

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        self.begun[backend].set()
        other = "diffusion" if backend == "composite" else "composite"
        if self.begun[other].wait(timeout=self.wait_s):
            self.met.append(backend)
        return super().generate("composite", variants)


def test_the_backends_of_a_round_are_called_together(tmp_path: Path) -> None:
    # The composite model (CPU) and the diffusion model (GPU) were called one after the other: the
    # round took the sum of both, the GPU idle while the composites were drawn.
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=4, size_px=64, backend_mix={"composite": 1, "diffusion": 1}
    )
    event = captioned_event(captioned_sku(store, 6), "together")
    generator = MeetingGenerator()
    [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)

    assert sorted(generator.met) == ["composite", "diffusion"]  # each call began before the other ended
    assert isinstance(outputs, list)
    assert Counter(emit.payload.backend for emit in outputs) == {"composite": 2, "diffusion": 2}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_more_requests_in_flight_than_triton_holds_still_get_every_variant_drawn(tmp_path: Path) -> None:
    # Triton holds 2 requests of a model (1 executing, 1 queued) and turns the rest away as overloaded.
    # With SKUFORGE_GENERATION_TRITON_CONCURRENCY above that, every call was refused, the variants it
    # had drawn thrown away with it, and the same batch sent again, for ever, with no hint why.
    server = TritonServerProcess(tmp_path, max_batch_size=1, batch_delay_us=0, max_queue_size=1).start()
    client = TritonGenerator(server.grpc_url, concurrency=8)
    requests = [
        VariantRequest(**{**triton_variant(seed).__dict__, "size": 512})  # slow enough to fill the queue
        for seed in range(8)
    ]
    refusals: list[GeneratorUnavailable] = []
    results: list[VariantResult | BadInput] = []
    try:
        for _ in range(len(requests)):  # each call draws at least the one Triton executes
            try:
                results = client.generate("composite", requests)
                break
            except GeneratorUnavailable as exc:
                refusals.append(exc)
    finally:
        client.close()
        server.stop()
    assert refusals, "8 requests in flight against a queue of 1 were never refused"
    assert len(results) == len(requests), f"still refused after {len(refusals)} calls"
    assert all(isinstance(result, VariantResult) for result in results)
    assert "SKUFORGE_GENERATION_TRITON_CONCURRENCY" in str(refusals[0]), refusals[0]
    assert "SKUFORGE_GENERATION_MAX_QUEUE_SIZE" in str(refusals[0]), refusals[0]
    images = [result.image.tobytes() for result in results if isinstance(result, VariantResult)]
    assert len(set(images)) == len(requests)  # each its own variant, in order of the requests


@pytest.mark.slow
def test_a_batch_that_redraws_with_more_requests_than_triton_holds_still_gets_every_variant(
    tmp_path: Path,
) -> None:
    # Triton holds 2 requests; the batch's first round sends 16 variants, its second the 4 of p0 (whose
    # empty mask the compositor refuses) from the other photos. The client kept the answers a refused
    # call had drawn only until its next call of the model: on the retry the first round, sent again,
    # threw the second round's away, so the second round never had its 4 answered: retried for ever.
    server = TritonServerProcess(tmp_path, max_batch_size=1, batch_delay_us=0, max_queue_size=1).start()
    client = TritonGenerator(server.grpc_url, concurrency=8)
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=16, size_px=512)
    captioned = with_mask(
        store, captioned_sku(store, 3, usable_photos=4), "p0", np.zeros((192, 192), np.uint8)
    )
    event = captioned_event(captioned, "redraws-overloaded")
    outputs: list[Emit] | BadInput | None = None
    retries = 0
    try:
        while outputs is None and retries < 40:  # a retry of the whole batch, as the runtime makes
            try:
                [outputs] = handle_batch([event], ctx, generator=client, generation=generation)
            except GeneratorUnavailable:
                retries += 1
        [model] = server.statistics()["model_stats"]
    finally:
        client.close()
        server.stop()
    assert retries, "16 requests in flight against a queue of 1 were never refused"
    assert isinstance(outputs, list), f"still refused after {retries} retries of the batch"
    drawn_from = {emit.payload.variant_index: emit.payload.reference_photo_id for emit in outputs}  # type: ignore[attr-defined]
    assert sorted(drawn_from) == list(range(16)) and "p0" not in drawn_from.values()
    # Each variant was drawn once: a retry asks Triton for none of those a call before it answered
    # (the first round's 16 were drawn again on every retry that a refused redraw round caused).
    assert int(model["inference_count"]) == 16 + 4


@pytest.mark.slow
def test_a_sku_retried_alone_after_its_batch_failed_is_not_drawn_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One variant of the second SKU fails (a backend bug): the batch fails, and the runtime runs each
    # SKU alone (``Stage._single``). The first SKU alone was done and cleared every answer the client
    # kept, the second's too: its retry drew its good variants again, GPU time and all.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=3, size_px=64)
    first, second = (captioned_event(captioned_sku(store, index), "alone", str(index)) for index in (1, 2))
    seeds = [
        planned.seed for event in (first, second) for planned in plan_variants(event.payload, generation)
    ]
    failing = seeds[4]  # the second SKU's variant 1
    with poisoned_triton(monkeypatch, PoisonedComposite(failing={failing}, away=())) as (url, backend):
        client = TritonGenerator(url, concurrency=4)
        try:
            with pytest.raises(GeneratorFailed):
                handle_batch([first, second], ctx, generator=client, generation=generation)
            [served] = handle_batch([first], ctx, generator=client, generation=generation)
            with pytest.raises(GeneratorFailed, match=f"seed {failing}"):
                handle_batch([second], ctx, generator=client, generation=generation)
        finally:
            client.close()
    assert isinstance(served, list) and len(served) == 3
    # Each variant drawn once: the second SKU's alone was answered from what its batch had drawn.
    assert sorted(backend.painted) == sorted(seed for seed in seeds if seed != failing)


@pytest.mark.slow
def test_a_batch_retried_after_another_partitions_batch_is_not_drawn_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A variant of the first SKU cannot be served now (the store its model reads is away): its
    # partition backs off while the others go on. The next batch, of another partition, was done and
    # cleared every answer kept, so the retry of the first drew its good variants again.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=3, size_px=64)
    waiting, other = (
        captioned_event(captioned_sku(store, index), "partitions", str(index)) for index in (1, 2)
    )
    seeds = [
        planned.seed for event in (waiting, other) for planned in plan_variants(event.payload, generation)
    ]
    away = seeds[1]  # the waiting SKU's variant 1
    with poisoned_triton(monkeypatch, PoisonedComposite(failing=(), away={away})) as (url, backend):
        client = TritonGenerator(url, concurrency=4)
        try:
            with pytest.raises(GeneratorUnavailable):
                handle_batch([waiting], ctx, generator=client, generation=generation)
            [served] = handle_batch([other], ctx, generator=client, generation=generation)
            backend.away = frozenset()  # the store is back
            [retried] = handle_batch([waiting], ctx, generator=client, generation=generation)
        finally:
            client.close()
    assert isinstance(served, list) and isinstance(retried, list) and len(retried) == 3
    assert sorted(backend.painted) == sorted(seeds)  # each variant drawn once


@pytest.mark.parametrize(
    ("ports", "named"),
    [
        (
            {"SKUFORGE_GENERATION_SERVER_GRPC_PORT": "8000"},
            "SKUFORGE_GENERATION_SERVER_GRPC_PORT: Value error, port 8000 is also "
            "SKUFORGE_GENERATION_SERVER_HTTP_PORT",
        ),
        (
            {"SKUFORGE_GENERATION_SERVER_METRICS_PORT": "8001"},
            "SKUFORGE_GENERATION_SERVER_METRICS_PORT: Value error, port 8001 is also "
            "SKUFORGE_GENERATION_SERVER_GRPC_PORT",
        ),
        (
            {
                "SKUFORGE_GENERATION_SERVER_HTTP_PORT": "18002",
                "SKUFORGE_GENERATION_SERVER_METRICS_PORT": "18002",
            },
            "SKUFORGE_GENERATION_SERVER_METRICS_PORT: Value error, port 18002 is also "
            "SKUFORGE_GENERATION_SERVER_HTTP_PORT",
        ),
        (
            {"SKUFORGE_GENERATION_SERVER_METRICS_PORT": "18012", "SKUFORGE_METRICS_PORT": "18012"},
            "SKUFORGE_METRICS_PORT 18012 is also SKUFORGE_GENERATION_SERVER_METRICS_PORT",
        ),
    ],
)
def test_serve_generator_refuses_two_servers_on_one_port_naming_both_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ports: dict[str, str], named: str
) -> None:
    # Accepted, Triton printed its 400-line usage with the reason buried in it, while the server had
    # logged "serving" and waited minutes for a Triton that was gone.
    from skuforge_cli.main import main as cli_main

    for name, port in ports.items():
        monkeypatch.setenv(name, port)
    if "SKUFORGE_METRICS_PORT" not in ports:
        with pytest.raises(ConfigError, match=named):  # the stage and the server read the same settings
            load_settings(GenerationSettings)
    assert cli_main(["serve", "generator"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge serve: ") and named in err and "Traceback" not in err


@pytest.mark.slow
def test_a_diffusion_image_records_its_sample_index_not_a_variant_index_that_contradicts_its_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backend recorded parameters.variant_index, its index among the request's samples: always 0
    # from the stage (one sample per request), beside the event's own variant_index 1, 2, 3...
    from bench.tiny_diffusion import build_tiny_inpaint_pipeline
    from shared.generation.diffusion import DiffusionBackend, DiffusionSettings

    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    for name, value in {
        "SKUFORGE_DIFFUSION_MODEL": str(build_tiny_inpaint_pipeline(tmp_path / "tiny-sd-inpaint")),
        "SKUFORGE_DIFFUSION_DEVICE": "cpu",
        "SKUFORGE_DIFFUSION_THREADS": "1",
        "SKUFORGE_DIFFUSION_STEPS": "1",
        "SKUFORGE_DIFFUSION_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    diffusion = DiffusionBackend.from_settings(load_settings(DiffusionSettings), settings)
    ctx = Context("generator", store, settings, StageMetrics("generator"), logging.getLogger("test"))
    generation = load_settings(
        GenerationSettings,
        generation_backend="diffusion",
        generation_variants_per_sku=2,
        generation_size_px=64,
    )
    captioned = captioned_sku(store, 6)
    event = captioned_event(captioned, "sample-index")
    [outputs] = handle_batch([event], ctx, generator=RefusingGenerator(diffusion), generation=generation)
    assert isinstance(outputs, list), outputs
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    assert [g.variant_index for g in generated] == [0, 1]
    recorded = [image.parameters.get("variant_index", image.variant_index) for image in generated]
    assert recorded == [image.variant_index for image in generated]
    # (seed, sample_index) draws the placement and the noise: the replay recipe.
    assert [image.parameters.get("sample_index") for image in generated] == [0, 0]

    # A request for several samples records each one's index among them.
    reference = ctx.read_image(captioned.photos[0].image)
    assert captioned.photos[0].mask is not None
    request = GenerationRequest(
        reference=np.asarray(reference),
        mask=ctx.read_mask(captioned.photos[0].mask),
        prompt="a photo of sks can",
        negative_prompt="",
        seed=3,
        n=2,
        parameters={},
        size=64,
    )
    assert [sample.parameters["sample_index"] for sample in diffusion.generate(request)] == [0, 1]


@pytest.mark.parametrize(("plain_background", "warned"), [(0.3, True), (0.9, False)])
def test_a_sku_cut_out_of_in_store_photos_is_logged_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, plain_background: float, warned: bool
) -> None:
    """A SKU of in-store photos only (a crate of apples): its products were cut from them, four apples
    and a price tag pasted on each scene and accepted by the gate (the expected mask is that same
    cut-out); with `skuforge up` and `skuforge ingest`, nothing said so."""
    store, ctx, generation = arrange_generator(
        tmp_path, variants_per_sku=2, size_px=64, min_plain_background=None
    )
    captioned = captioned_sku(store, 2)
    photos = [photo.model_copy(update={"plain_background": plain_background}) for photo in captioned.photos]
    captioned = captioned.model_copy(update={"photos": photos})
    event = captioned_event(captioned, "in-store", str(plain_background))
    with caplog.at_level(logging.WARNING):
        generator = InProcessGenerator(CompositeBackend(None))
        [outputs] = handle_batch([event], ctx, generator=generator, generation=generation)
    assert isinstance(outputs, list) and len(outputs) == 2, outputs
    said = [
        record
        for record in caplog.records
        if record.getMessage() == "no photo on a plain background: products cut out of in-store photos"
    ]
    assert len(said) == (1 if warned else 0)
    if warned:
        assert said[0].sku_id == captioned.sku.sku_id  # type: ignore[attr-defined]
        assert said[0].photos == ["p0", "p1"]  # type: ignore[attr-defined]
        assert said[0].min_plain_background == 0.7  # type: ignore[attr-defined]
