"""Generator: N new training images per captioned SKU, from the generation model on Triton.

Consumes: ``sku.captioned``.
Produces: one ``image.generated`` per variant (``SKUFORGE_GENERATION_VARIANTS_PER_SKU`` per SKU,
spread round-robin over its usable photos on a plain background, or over all usable ones when none
is: ``cutout_sources``; of such in-store photos each mask's largest blob is cut, and those whose blob
is one solid object are drawn from alone when there are any: ``one_object_photos``, the others only
for a variant refused from every one of those; while one photo can be drawn from, the SKU gets them
all), after writing
two PNGs per variant to the object store. The item id comes from the input event and the variant
index, so a redelivered event's events get the same ids; the keys also carry the first 16 hex digits
of the PNG's sha256, so a re-render that differs (the scene library changed in between) goes beside
the earlier one, which events already sent still point at:

* ``generated/<sku_id>/<item_id>-<sha16>.png``        the generated image
* ``masks/expected/<sku_id>/<item_id>-<sha16>.png``   where the product's own pixels are (0/255)

Each event carries the backend, model id, adapter, prompt, seed, variant index and the
parameters the model actually used, and embeds the reference photo and mask it came from.

Which backend makes which variant: ``SKUFORGE_GENERATION_BACKEND_MIX`` (shares per backend: each
SKU gets each backend's share of its variants rounded down or up, drawn from the SKU and
``SKUFORGE_GENERATION_SEED`` so that over many SKUs the shares are those configured; in blocks in
the order composite, diffusion), else all ``SKUFORGE_GENERATION_BACKEND``. Each variant's seed is
derived from (sku_id, photo_id, variant index, ``SKUFORGE_GENERATION_SEED``), so the same SKU
always gets the same images.

Bad input goes to the DLQ with its reason: no usable photo (``no_usable_photo``), a photo or mask
missing or altered in the store (``object_missing``, ``checksum_mismatch``), not a readable image
(``corrupt``...), a refusal a replay may cure (``unknown_adapter``...) or one of the adapter the SKU
gets (``adapter_unloadable``, ``adapter_base_mismatch``, ``adapter_checksum_mismatch``: every photo
would draw it again), or every variant refused from every photo (``generation_refused``...). A
variant the model refuses for good (a photo whose mask it cannot place), or whose PNG is over
``SKUFORGE_MAX_IMAGE_BYTES`` (``too_large_bytes``: not stored, as every later stage would refuse it),
is asked for again from another of the SKU's photos, with that photo's seed (of the photos after it
in turn not refused for it, variant ``i`` takes the ``i``-th, so a photo refused for every variant
spreads them over the others, and the same SKU still gets the same images, each event naming the photo
and seed it came from; of a SKU cut from in-store photos, once every photo of one object was refused
for it, from the photos passed over as not one object, read again and logged, "in-store photos that
are not one object drawn from", with the SKU): logged
("variant refused, drawn from another photo", with the photo and reason) and counted (the model's refusals
as ``skuforge_triton_errors_total{kind="refused"}``; ``too_large_bytes``, and an empty reference or mask
the client does not send, as ``skuforge_generator_variants_refused_total{reason}``); refused from every
photo, it is left out ("variant refused, left out", counted as
``skuforge_generator_variants_left_out_total{reason}``). A photo that cannot be read for good
(``dimension_mismatch``, ``not_an_image``, ``checksum_mismatch``...) while another photo of the SKU can
takes no turn: the others draw its variants, logged ("photo unreadable, its variants drawn from the other
photos") and counted (``skuforge_generator_photos_left_out_total{reason}``), and so is an in-store photo
passed over as not one object that is gone when read again (``object_missing``: a fall-back, for which the
SKU's variants drawn from its other photos went to the DLQ); any other photo ``object_missing`` (which a
replay may cure) or none readable still sends the SKU to the DLQ, and a letter for the variants of the
readable photos (all refused) names the unreadable ones in its detail too (its reason ``object_missing``
when one of them is: back, it may draw them). Triton down, loading, overloaded, slow or not serving the
model asked for is transient: the partition is paused and retried, nothing is committed, and the variants
Triton did draw are not drawn again (the client keeps them until their input is committed,
``TritonGenerator.forget``, and a failed batch's SKUs retried alone each find theirs).

The model: served by ``skuforge serve generator`` (``services/generator/server.py``); this
stage only calls it (``services/generator/client.py``). Knobs: ``shared/generation/settings.py``.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import importlib
import itertools
import json
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Counter

from schemas.envelope import Envelope, derive_id
from schemas.events import CaptionedPhoto, ImageGenerated, SkuCaptioned
from schemas.flow import GENERATOR
from schemas.topics import IMAGE_GENERATED, SKU_CAPTIONED
from services.generator.client import GeneratorFailed, GeneratorUnavailable, NotSent, TritonGenerator
from services.generator.protocol import ADAPTER_REFUSALS, VariantRequest, VariantResult, model_name
from shared import keys
from shared.config import ConfigError, Settings, load_settings
from shared.dlq import is_permanent
from shared.errors import BadInput, ImageRejected, TransientError, with_detail
from shared.generation.backend import (
    BACKEND_NAMES,
    COLOUR_GAIN_KEY,
    cluttered_cutout,
    cut_from_cluttered_photos,
    cutout_sources,
    is_pile,
    one_object_photos,
)
from shared.generation.composite import COMPOSITE_PARAMETERS, product_framing
from shared.generation.diffusion import DIFFUSION_PARAMETERS
from shared.generation.settings import GenerationSettings, check_images_fit
from shared.images import decode_image, decode_mask, encode_png, pixel_array
from shared.runtime import Context, Emit, Stage, run_stage_loading, stage_command

STAGE_NAME = GENERATOR.name
# The kinds of skuforge_triton_errors_total (its help text says what each means).
TRITON_ERROR_KINDS = (
    "overloaded",
    "timeout",
    "unavailable",
    "internal",
    "model_missing",
    "malformed",
    "refused",
    "backend_error",
)
# The reasons of skuforge_generator_variants_refused_total (a variant drawn that the stage refuses itself,
# or one its client does not send: ``NotSent``), and those skuforge_generator_variants_left_out_total
# starts at 0 with (generation_refused is also the model's refusal without a reason of its own).
GENERATOR_REFUSALS = ("too_large_bytes", "generation_refused")


class GenerationClient(Protocol):
    """What the stage asks of the generation model: ``TritonGenerator`` in service, a stand-in drawing
    in this process in tests."""

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        """One result per variant, in the order of ``variants``."""
        ...

    def forget(self, backend: str, variants: Sequence[VariantRequest]) -> None:
        """Let go of what was kept of ``variants`` for a retry (``TritonGenerator.forget``)."""
        ...


class GeneratorMetrics:
    """Triton's answers as the stage sees them, in the stage's registry (Triton's own queue and batch
    figures are on Triton's /metrics). Each of ``models`` starts at 0 for every kind, so rate() counts
    its first error after a restart."""

    def __init__(self, registry: CollectorRegistry, models: Sequence[str] = ()) -> None:
        self.triton_errors = Counter(
            "skuforge_triton_errors_total",
            "Triton calls that did not bring an image, by model and kind: overloaded (Triton's queue was "
            "full and turned the request away), timeout, unavailable (Triton away, a store the model reads, "
            "such as the adapter registry, or a model cache that refuses or cannot hold an adapter's copy: "
            "retried, never dead-lettered), internal (the model raised: a server fault, or an older "
            "generator server raising on a variant; retried), model_missing (Triton is up but does not "
            "serve the model: a backend it does not serve, its model repository, or a model still "
            "loading or that failed to load; retried), "
            "malformed (our request), "
            "refused (the model refused the variant; counted once per input committed), backend_error (the "
            "model raised on the variant even when served alone, or a server answered an image or mask of "
            "another size than asked, or parameters that are no JSON object: retried as a handler error, "
            "then dead-lettered).",
            ["model", "kind"],
            registry=registry,
        )
        for model in models:
            for kind in TRITON_ERROR_KINDS:
                self.triton_errors.labels(model, kind)
        self.photos_left_out = Counter(
            "skuforge_generator_photos_left_out_total",
            "Reference photos the generator could not read for good (dimension_mismatch, not_an_image, "
            "checksum_mismatch...), or in-store photos passed over as not one object gone when read again "
            "for a refused variant (object_missing), while another photo of the SKU could: the others drew "
            "their variants (counted once per input committed), by reason.",
            ["reason"],
            registry=registry,
        )
        self.variants_refused = Counter(
            "skuforge_generator_variants_refused_total",
            "Variants the generator itself refused, by reason: too_large_bytes (drawn by the model, its "
            "PNG is over SKUFORGE_MAX_IMAGE_BYTES, which every later stage reads images under: not "
            "stored), generation_refused (an empty reference or mask, which its Triton client does not "
            "send). Each is drawn from another photo or left out (counted once per input committed); the "
            'model\'s own refusals are skuforge_triton_errors_total{kind="refused"}.',
            ["reason"],
            registry=registry,
        )
        for reason in GENERATOR_REFUSALS:
            self.variants_refused.labels(reason)
        self.variants_left_out = Counter(
            "skuforge_generator_variants_left_out_total",
            "Variants refused from every photo of a SKU whose other variants were drawn, so that it got "
            'fewer than SKUFORGE_GENERATION_VARIANTS_PER_SKU images (logged "variant refused, left out"), '
            "by the reason of the last refusal (generation_refused, too_large_bytes...; counted once per "
            "variant, once its input is committed). A SKU none of whose variants is drawn is dead-lettered "
            "instead.",
            ["reason"],
            registry=registry,
        )
        for reason in GENERATOR_REFUSALS:
            self.variants_left_out.labels(reason)


@dataclass(frozen=True)
class PlannedVariant:
    """One image to generate: from which photo, with which backend and seed."""

    variant_index: int
    photo: CaptionedPhoto
    backend: str
    seed: int
    pile_offset: float = 0.0  # where this SKU's piles fall (``is_pile``): drawn per SKU


def assign_backends(shares: dict[str, float], total: int, offset: float) -> list[str]:
    """The backend of each of ``total`` variants, in blocks in ``BACKEND_NAMES`` order: variant ``i``
    goes to the backend whose share covers ``(i + offset) / total`` (systematic sampling).

    Each backend gets its share of ``total`` rounded down or up, and, with ``offset`` spread evenly
    over SKUs in 0..1, its share on average. Rounded the same way for every SKU (largest remainder),
    a mix of 3:1 with 2 variants per SKU never used the second backend at all.
    """
    names = [name for name in BACKEND_NAMES if shares.get(name, 0.0) > 0]
    bounds = list(itertools.accumulate(shares[name] for name in names))
    return [
        names[min(bisect.bisect_right(bounds, (index + offset) / total), len(names) - 1)]
        for index in range(total)
    ]


def share_offset(what: str, sku_id: str, base_seed: int) -> float:
    """Where in 0..1 a SKU's variants start on the shares of ``what`` (backends, piles): fixed by the
    SKU and the seed, spread evenly over SKUs, so that each share holds over many SKUs."""
    return int(derive_id(what, sku_id, str(base_seed))[:8], 16) / 2**32


def variant_seed(sku_id: str, photo_id: str, variant_index: int, base_seed: int) -> int:
    """A 31-bit seed that depends only on the SKU, the photo, the variant and the configured seed."""
    return int(derive_id("seed", sku_id, photo_id, str(variant_index), str(base_seed))[:8], 16) & 0x7FFFFFFF


def photos_in_turn(captioned: SkuCaptioned, generation: GenerationSettings) -> list[CaptionedPhoto]:
    """The photos the SKU's variants are drawn from, in turn (``cutout_sources``); refuses a SKU with no
    usable photo."""
    usable = [photo for photo in captioned.photos if photo.usable and photo.mask is not None]
    if not usable:
        reasons = "; ".join(f"{p.photo_id}: {p.unusable_reason or 'no mask'}" for p in captioned.photos)
        raise BadInput("no_usable_photo", f"no photo of {captioned.sku.sku_id} can be used ({reasons})")
    return cutout_sources(usable, generation.generation_min_plain_background)


def plan_variants(
    captioned: SkuCaptioned,
    generation: GenerationSettings,
    left_out: Collection[str] = (),
    turn: Sequence[CaptionedPhoto] | None = None,
) -> list[PlannedVariant]:
    """The SKU's variants: photos round-robin, backends by share; refuses a SKU with no usable photo.

    ``left_out``: ids of photos that cannot be read; the others take their turns, so that the SKU still
    gets ``generation_variants_per_sku`` variants while one photo is left. At least one must be left.
    ``turn``: the photos to draw from, when chosen by their masks (``SkuDraws``); else
    ``photos_in_turn``.
    """
    turn = photos_in_turn(captioned, generation) if turn is None else turn
    usable = [photo for photo in turn if photo.photo_id not in left_out]
    total = generation.generation_variants_per_sku
    sku_id, base_seed = captioned.sku.sku_id, generation.generation_seed
    backends = assign_backends(generation.shares(), total, share_offset("backends", sku_id, base_seed))
    pile_offset = share_offset("piles", sku_id, base_seed)
    return [
        PlannedVariant(
            variant_index=index,
            photo=usable[index % len(usable)],
            backend=backends[index],
            seed=variant_seed(sku_id, usable[index % len(usable)].photo_id, index, base_seed),
            pile_offset=pile_offset,
        )
        for index in range(total)
    ]


def redraw_photo(
    groups: Sequence[Sequence[str]], refused: str, variant_index: int, ruled_out: Collection[str]
) -> str | None:
    """The id of the photo a variant refused from ``refused`` is drawn from next, or None when none is
    left: of the first of ``groups`` (the photos in turn, then those passed over as not one object) with
    a photo not ``ruled_out`` (refused for the variant, unreadable), of those after ``refused`` in it,
    the ``variant_index``-th (modulo their number). ``SkuDraws.redraw``, and the benchmark's in-process
    path (``bench/augment.py``), which is to choose as the stage does."""
    for ids in groups:
        after = list(ids)
        if refused in after:
            start = after.index(refused)
            after = after[start + 1 :] + after[:start]
        if candidates := [photo_id for photo_id in after if photo_id not in ruled_out]:
            return candidates[variant_index % len(candidates)]
    return None


def variant_parameters(planned: PlannedVariant, generation: GenerationSettings) -> dict[str, Any]:
    """The backend knobs of one variant: the configured ones its backend knows, and for composites of
    loose produce a pile in ``generation_pile_share`` of the variants (where a scene photo is drawn;
    one product on procedural scenes). A knob set in ``generation_parameters`` wins."""
    # Each backend gets its own knobs only: the composite backend refuses others, and the diffusion
    # backend echoed the composite ones ({"occluders": 0}) into its images' parameters, as if used.
    knows = COMPOSITE_PARAMETERS if planned.backend == "composite" else DIFFUSION_PARAMETERS
    parameters = {key: value for key, value in generation.generation_parameters.items() if key in knows}
    if (
        planned.backend == "composite"
        and planned.photo.shape == "produce"
        and is_pile(planned.variant_index, generation.generation_pile_share, planned.pile_offset)
    ):
        parameters.setdefault("arrangement", "pile")
    return parameters


def prompt_for(captioned: SkuCaptioned, photo: CaptionedPhoto) -> str:
    """The instance prompt, then the photo's detailed caption: detailed captions keep diffusion faithful."""
    return f"{captioned.instance_prompt}, {photo.caption}" if photo.caption else captioned.instance_prompt


def _read_reference(
    photo: CaptionedPhoto, ctx: Context, max_side_px: int, *, cluttered: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """The photo (RGB) and its mask (0/255), verified against their sha256, shrunk to ``max_side_px``
    and cropped around the product, with the share of the whole photo the product fills (its framing,
    which the crop would otherwise lose). ``cluttered``: an in-store photo, whose mask is cut to its
    largest blob (``cluttered_cutout``) before the crop and framing are measured on it."""
    assert photo.mask is not None
    max_pixels, max_bytes = ctx.settings.max_image_pixels, ctx.settings.max_image_bytes
    image = decode_image(ctx.store.read_verified(photo.image), max_pixels=max_pixels, max_bytes=max_bytes)
    mask = decode_mask(ctx.store.read_verified(photo.mask), max_pixels=max_pixels, max_bytes=max_bytes)
    if mask.shape != (image.height, image.width):
        raise BadInput(
            "dimension_mismatch",
            f"mask of {photo.photo_id} is {mask.shape[1]}x{mask.shape[0]}, "
            f"the photo {image.width}x{image.height}",
        )
    scale = max_side_px / max(image.size)
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    binary = np.where(mask >= 128, 255, 0).astype(np.uint8)
    if cluttered:
        binary = cluttered_cutout(binary)
    return (*crop_to_product(pixel_array(image), binary), product_framing(binary))


def crop_to_product(
    reference: np.ndarray, mask: np.ndarray, margin_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Photo and mask cropped to the product's bounding box plus a margin: backends use only the
    product's pixels, and a smaller request travels faster. An empty mask is left for the model
    to refuse with its own reason."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return reference, mask
    margin = round(margin_fraction * max(mask.shape))
    y0, y1 = max(0, int(rows[0]) - margin), min(mask.shape[0], int(rows[-1]) + 1 + margin)
    x0, x1 = max(0, int(cols[0]) - margin), min(mask.shape[1], int(cols[-1]) + 1 + margin)
    return np.ascontiguousarray(reference[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1])


class SkuDraws:
    """One SKU's variants through the rounds of Triton calls: the photos read (lazily, in turn), those
    that cannot be read for good, each variant's image once drawn, and every refusal met on the way."""

    def __init__(self, captioned: SkuCaptioned, ctx: Context, generation: GenerationSettings) -> None:
        """Reads photos in turn until every variant has one (or none is left) and plans the variants over
        those read. ``BadInput`` when the SKU cannot be served: no usable photo, none readable, or one
        a replay may bring back (``object_missing``: left out, its variants would be lost once it is)."""
        self.captioned, self._ctx, self._generation = captioned, ctx, generation
        self.turn = photos_in_turn(captioned, generation)
        usable = [photo for photo in captioned.photos if photo.usable and photo.mask is not None]
        self.cluttered = cut_from_cluttered_photos(usable, generation.generation_min_plain_background)
        self.references: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        self.unreadable: dict[str, BadInput] = {}  # photo_id -> why it cannot be read
        # By variant index, each with its image's PNG: encoded once, to check its size (``_too_large``)
        # and to store.
        self.drawn: dict[int, tuple[PlannedVariant, VariantResult, bytes]] = {}
        self.refusals: list[tuple[PlannedVariant, BadInput]] = []
        self.sent: list[tuple[str, VariantRequest]] = []  # (backend, request): what Triton was asked
        self._tried: dict[int, set[str]] = {}  # variant index -> photos refused for it
        # In-store photos whose cut-out is not one object, while another's is: drawn from only for a
        # variant every photo in turn was refused for (``redraw``), read again then.
        self.passed_over: list[CaptionedPhoto] = []
        for photo in self.turn:
            # In-store photos are all read: which of them are drawn from depends on every one's mask.
            if not self.cluttered and len(self.references) == generation.generation_variants_per_sku:
                break
            try:
                self._read(photo)
            except BadInput as missing:
                # As a letter of ``handle_batch``: one naming only the missing photo, once it was back,
                # left out those found unreadable before it unawares.
                raise _naming_photos_left_out(missing, self.unreadable) from missing
        if not self.references:
            # The letter names every photo: one naming only the first, once that was fixed, left the
            # others out of a replay unawares.
            first, *others = self.unreadable.items()
            raise _naming_photos_left_out(first[1], dict(others))
        if self.cluttered:
            readable = [photo for photo in self.turn if photo.photo_id in self.references]
            masks = {photo_id: reference[1] for photo_id, reference in self.references.items()}
            self.turn = one_object_photos(readable, masks)
            chosen = {photo.photo_id for photo in self.turn}
            self.passed_over = [photo for photo in readable if photo.photo_id not in chosen]
            self.references = {key: value for key, value in self.references.items() if key in chosen}
        self.plan = plan_variants(captioned, generation, left_out=self.unreadable, turn=self.turn)

    def _read(self, photo: CaptionedPhoto, *, fallback: bool = False) -> bool:
        """Whether ``photo`` can be drawn from; raises the ``BadInput`` a replay may cure, except for a
        ``fallback`` photo (passed over, read again), then left out as one unreadable for good: raised,
        it sent the SKU to the DLQ with the variants its other photos drew, for a photo that could give
        only those they were refused."""
        if photo.photo_id not in self.references and photo.photo_id not in self.unreadable:
            try:
                self.references[photo.photo_id] = _read_reference(
                    photo, self._ctx, self._generation.generation_max_reference_px, cluttered=self.cluttered
                )
            except BadInput as problem:
                if not is_permanent(problem.reason) and not fallback:
                    raise
                self.unreadable[photo.photo_id] = problem
        return photo.photo_id in self.references

    def redraw(self, refused: PlannedVariant) -> PlannedVariant | None:
        """The refused variant drawn from another photo not refused for it yet (its seed that photo's),
        or None when every photo was; raises the ``BadInput`` a replay may cure.

        Of the photos after the refused one in turn, variant ``i`` takes the ``i``-th (modulo their
        number): the next photo alone took all the variants of a photo refused for every one of them.
        Once every photo in turn was refused for the variant, the in-store photos passed over as not
        one object (``passed_over``) are drawn from in the same way, read again: ``one_object_photos``
        takes them all when none is one object, and the variant was lost (the SKU dead-lettered when
        every variant was) though they could give it. One gone by then is no candidate (``_read``).
        """
        tried = self._tried.setdefault(refused.variant_index, set())
        tried.add(refused.photo.photo_id)
        by_id = {photo.photo_id: photo for photo in (*self.turn, *self.passed_over)}
        groups = [[photo.photo_id for photo in photos] for photos in (self.turn, self.passed_over)]
        index = refused.variant_index
        while (
            photo_id := redraw_photo(groups, refused.photo.photo_id, index, {*tried, *self.unreadable})
        ) is not None:
            # False: it is unreadable now, and no candidate the next time round.
            if self._read(by_id[photo_id], fallback=photo_id in groups[1]):
                seed = variant_seed(
                    self.captioned.sku.sku_id, photo_id, index, self._generation.generation_seed
                )
                return dataclasses.replace(refused, photo=by_id[photo_id], seed=seed)
        return None

    def request(self, planned: PlannedVariant) -> VariantRequest:
        """What Triton is asked for ``planned``."""
        reference, mask, framing = self.references[planned.photo.photo_id]
        parameters = variant_parameters(planned, self._generation)
        if planned.backend == "composite":
            # Framed as in the whole photo, not as in the crop sent (where the product fills ~90%).
            parameters.setdefault("reference_framing", round(framing, 6))
        captioned = self.captioned
        return VariantRequest(
            reference=reference,
            mask=mask,
            prompt=prompt_for(captioned, planned.photo),
            negative_prompt=captioned.negative_prompt,
            seed=planned.seed,
            parameters_json=json.dumps(parameters, sort_keys=True),
            adapter_id=self._generation.generation_adapter_id,
            series=captioned.sku.series or None,
            size=self._generation.generation_size_px,
            own_names=tuple(name for name in (captioned.sku.category, captioned.sku.name) if name.strip()),
        )


def handle_batch(
    events: Sequence[Envelope[SkuCaptioned]],
    ctx: Context,
    *,
    generator: GenerationClient,
    generation: GenerationSettings,
    metrics: GeneratorMetrics | None = None,
) -> list[list[Emit] | BadInput]:
    """Generate every variant of every event; a SKU that cannot be served refuses only itself.

    All variants of the batch go to Triton together (grouped per backend), so its dynamic batcher
    sees them concurrently; a variant refused for good is asked for again from another of the SKU's
    photos (``SkuDraws.redraw``), in another round. A transient Triton fault raises, and the runtime
    retries the batch.
    """
    draws: dict[int, SkuDraws] = {}
    refused: dict[int, BadInput] = {}
    for position, event in enumerate(events):
        try:
            draws[position] = SkuDraws(event.payload, ctx, generation)
        except BadInput as refusal:
            refused[position] = refusal
    # One photo that cannot be read for good (a mask of another size, a corrupt or altered file), or
    # that the model cannot draw from (a cut-out whose mask it cannot place), dead-lettered the whole
    # SKU, then left its variants out: the SKU's other photos draw them, so it still gets N images.
    pending = [(position, planned) for position, draw in draws.items() for planned in draw.plan]
    while pending:
        answers = _generate(pending, draws, generator, ctx, metrics)
        retries: list[tuple[int, PlannedVariant]] = []
        for (position, planned), result in zip(pending, answers, strict=True):
            if isinstance(result, BadInput) and metrics is not None:
                # Once the input is committed: a batch retried after a transient fault has its refusals
                # answered again (from what the client kept), and counting each attempt counted them again.
                # One the client did not send (NotSent) is no Triton call: counted as the stage's own.
                refused_here = (
                    metrics.variants_refused.labels(result.reason)
                    if isinstance(result, NotSent)
                    else metrics.triton_errors.labels(model_name(planned.backend), "refused")
                )
                ctx.after_commit(refused_here.inc, events[position])
            if position in refused:
                continue
            draw = draws[position]
            if isinstance(result, VariantResult):
                png = encode_png(result.image)
                if (oversized := _too_large(png, planned, ctx.settings.max_image_bytes)) is None:
                    draw.drawn[planned.variant_index] = (planned, result, png)
                    continue
                result = oversized
                if metrics is not None:
                    refused_here = metrics.variants_refused.labels(oversized.reason)
                    ctx.after_commit(refused_here.inc, events[position])
            draw.refusals.append((planned, result))
            if not is_permanent(result.reason) or result.reason in ADAPTER_REFUSALS:
                # A refusal a replay may cure (unknown_adapter) refuses the SKU, so the letter brings
                # back every variant; so does one of its adapter (which every photo met in turn, then
                # its variants were left out, and no letter brought them back once it was fixed).
                refused[position] = _naming_photos_left_out(result, draw.unreadable)
                continue
            try:
                again = draw.redraw(planned)
            except BadInput as missing:  # the next photo is missing from the store: as above
                refused[position] = _naming_photos_left_out(missing, draw.unreadable)
                continue
            if again is not None:
                retries.append((position, again))
        pending = [(position, planned) for position, planned in retries if position not in refused]

    outputs: list[list[Emit] | BadInput] = []
    for position, event in enumerate(events):
        if position in refused:
            outputs.append(refused[position])
            continue
        draw = draws[position]
        if not draw.drawn:  # every variant refused, from every photo
            letter = min(draw.refusals, key=lambda refusal: refusal[0].variant_index)[1]
            # A photo passed over and gone when read again (``SkuDraws._read``): back, it may draw them.
            if gone := [left for left in draw.unreadable.values() if not is_permanent(left.reason)]:
                # The gone photo's refusal (ObjectMissing) with the variants' detail: a plain BadInput
                # said error_class BadInput for an object_missing.
                letter = with_detail(gone[0], letter.detail)
            outputs.append(_naming_photos_left_out(letter, draw.unreadable))
            continue
        usable = [photo for photo in draw.captioned.photos if photo.usable and photo.mask is not None]
        least = generation.generation_min_plain_background
        if cut_from_cluttered_photos(usable, least):
            drawn_from = {planned.photo.photo_id for planned, _, _ in draw.drawn.values()}
            fallen_back = [photo.photo_id for photo in draw.passed_over if photo.photo_id in drawn_from]
            ctx.log.warning(
                "no photo on a plain background: products cut out of in-store photos",
                extra={
                    "sku_id": event.sku_id,  # a batch handler's log has no SKU of its own
                    "photos": [photo.photo_id for photo in usable],
                    # Those whose cut-out is one object, when any is (``one_object_photos``), and the
                    # others a variant refused from all of those was drawn from (``SkuDraws.redraw``).
                    "cut_from": [photo.photo_id for photo in draw.turn] + fallen_back,
                    "min_plain_background": least,
                    "hint": "such cut-outs are often not the product alone and the gate cannot tell; "
                    "check the images, add a product shot on a plain background",
                },
            )
            if fallen_back:
                ctx.log.warning(
                    "in-store photos that are not one object drawn from: the SKU's photos of one object "
                    "were refused for some variants",
                    extra={
                        "sku_id": event.sku_id,
                        "photo_ids": fallen_back,
                        "variant_indexes": sorted(
                            index
                            for index, (planned, _, _) in draw.drawn.items()
                            if planned.photo.photo_id in fallen_back
                        ),
                        "one_object": [photo.photo_id for photo in draw.turn],
                    },
                )
        for photo_id, left in draw.unreadable.items():
            ctx.log.warning(
                "photo unreadable, its variants drawn from the other photos",
                extra={"photo_id": photo_id, "reason": left.reason, "detail": left.detail[:300]},
            )
            if metrics is not None:
                ctx.after_commit(metrics.photos_left_out.labels(left.reason).inc, event)
        left_out: dict[int, str] = {}  # variant index -> the reason of its last refusal
        for planned, left in draw.refusals:
            redrawn = draw.drawn.get(planned.variant_index)
            if redrawn is None:
                left_out[planned.variant_index] = left.reason
            ctx.log.warning(
                "variant refused, drawn from another photo" if redrawn else "variant refused, left out",
                extra={
                    "photo_id": planned.photo.photo_id,
                    "variant_index": planned.variant_index,
                    "reason": left.reason,
                    "detail": left.detail[:300],
                    "drawn_from": redrawn[0].photo.photo_id if redrawn else None,
                },
            )
        if metrics is not None:
            # Logged only, a SKU short of its variants was invisible to Prometheus.
            for reason in left_out.values():
                ctx.after_commit(metrics.variants_left_out.labels(reason).inc, event)
        outputs.append([_store_variant(event, *draw.drawn[index], ctx) for index in sorted(draw.drawn)])
    for position, draw in draws.items():
        # What the client kept for a retry is let go once the input is committed, not when this call
        # is done: a retry may still come (a failed produce rewinds the batch), and the client keeps
        # the answers of the SKUs not handled yet (those of a failed batch, each retried alone next).
        ctx.after_commit(functools.partial(_forget, generator, draw.sent), events[position])
    return outputs


def _forget(generator: GenerationClient, sent: list[tuple[str, VariantRequest]]) -> None:
    """Let go of what ``generator`` kept of ``sent``, each request with its backend."""
    for backend in dict.fromkeys(backend for backend, _ in sent):
        generator.forget(backend, [request for sent_to, request in sent if sent_to == backend])


def _generate(
    pending: list[tuple[int, PlannedVariant]],
    draws: dict[int, SkuDraws],
    generator: GenerationClient,
    ctx: Context,
    metrics: GeneratorMetrics | None,
) -> list[VariantResult | BadInput]:
    """Triton's answer to each of ``pending`` (position in the batch, variant), in order; one call per
    backend, the backends' calls made together. A fault is raised once every call is done (a variant's
    failure before Triton being unavailable, as the client does), so the others' answers are kept."""
    calls: dict[str, tuple[list[int], list[VariantRequest]]] = {}
    for backend in dict.fromkeys(planned.backend for _, planned in pending):
        mine = [place for place, (_, planned) in enumerate(pending) if planned.backend == backend]
        requests = [draws[pending[place][0]].request(pending[place][1]) for place in mine]
        for place, request in zip(mine, requests, strict=True):
            draws[pending[place][0]].sent.append((backend, request))
        calls[backend] = (mine, requests)

    def call(backend: str) -> list[VariantResult | BadInput]:
        model, (mine, requests) = model_name(backend), calls[backend]
        try:
            with ctx.metrics.model_call(model, len(mine)):
                return generator.generate(backend, requests)
        except GeneratorUnavailable as exc:
            if metrics is not None:
                metrics.triton_errors.labels(model, exc.kind).inc()
            raise
        except RuntimeError as exc:
            if metrics is not None:
                kind = "backend_error" if isinstance(exc, GeneratorFailed) else "malformed"
                metrics.triton_errors.labels(model, kind).inc()
            raise

    # Together: one after the other, the GPU's diffusion model idled while the composite model drew
    # on the CPU, and a round took the sum of both.
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="generate") as pool:
        futures = {backend: pool.submit(call, backend) for backend in calls}
    faults = [fault for future in futures.values() if (fault := future.exception()) is not None]
    if faults:
        raise next((fault for fault in faults if not isinstance(fault, TransientError)), faults[0])
    answers: dict[int, VariantResult | BadInput] = {}  # by place in pending
    for backend, future in futures.items():
        mine, _ = calls[backend]
        for place, result in zip(mine, future.result(), strict=True):
            answers[place] = result
    return [answers[place] for place in range(len(pending))]


def _naming_photos_left_out(letter: BadInput, unreadable: dict[str, BadInput]) -> BadInput:
    """``letter`` with the photos that could not be read named after its own detail: it said only why
    the variants drawn were refused, and a replay once that was fixed left those photos out unawares."""
    if not unreadable:
        return letter
    named = "; ".join(
        f"photo {photo_id!r} could not be read ({left.reason}: {left.detail[:300]})"
        for photo_id, left in unreadable.items()
    )
    return with_detail(letter, f"{letter.detail}; also left out: {named}")


def _too_large(png: bytes, planned: PlannedVariant, max_bytes: int) -> ImageRejected | None:
    """The refusal of a variant whose PNG is over ``max_bytes``, else None. Stored, it was counted as
    generated and then dead-lettered by the matting, which reads it under the same limit: the cause
    named a stage late, and no other photo drew the variant."""
    if len(png) <= max_bytes:
        return None
    return ImageRejected(
        "too_large_bytes",
        f"variant {planned.variant_index} drawn from photo {planned.photo.photo_id!r} is a PNG of "
        f"{len(png)} bytes, over SKUFORGE_MAX_IMAGE_BYTES ({max_bytes}) that every stage reads images "
        "under: lower SKUFORGE_GENERATION_SIZE_PX, or raise the limit",
        setting="SKUFORGE_MAX_IMAGE_BYTES",
    )


def _store_variant(
    event: Envelope[SkuCaptioned],
    planned: PlannedVariant,
    result: VariantResult,
    png: bytes,
    ctx: Context,
) -> Emit:
    """Write the image (``png``, its PNG) and its expected mask under deterministic keys; the event that
    announces them."""
    captioned = event.payload
    sku_id = captioned.sku.sku_id
    item_id = derive_id(event.event_id, STAGE_NAME, str(planned.variant_index))
    assert planned.photo.mask is not None
    parameters: dict[str, Any] = json.loads(result.parameters_json)
    # Measured by the backend, not a knob: typed on the event, so the parameters stay a replay recipe.
    colour_gain = parameters.pop(COLOUR_GAIN_KEY, None)
    generated = ImageGenerated(
        item_id=item_id,
        sku=captioned.sku,
        reference_photo_id=planned.photo.photo_id,
        reference_image=planned.photo.image,
        reference_mask=planned.photo.mask,
        # The keys carry the PNG's sha256: a replay that renders other pixels (the scene library
        # changed) keeps the item id, and the events of the earlier render (in the matting and gate
        # queues, a task waiting for a person) must still find the bytes their sha256 names.
        image=ctx.store.put_png(
            keys.generated_key(sku_id, item_id),
            png,
            result.image.shape[1],
            result.image.shape[0],
            digest_in_key=True,
        ),
        expected_mask=ctx.store.put_image(
            keys.expected_mask_key(sku_id, item_id), result.expected_mask, digest_in_key=True
        ),
        backend=planned.backend,
        model_id=result.model_id,
        adapter_id=result.adapter_id,
        prompt=prompt_for(captioned, planned.photo),
        negative_prompt=captioned.negative_prompt,
        seed=planned.seed,
        variant_index=planned.variant_index,
        parameters=parameters,
        colour_gain=tuple(colour_gain) if colour_gain is not None else None,
    )
    # Counted once the input is committed, not at each attempt (a rewound batch runs again).
    ctx.after_commit(ctx.metrics.images.labels(ctx.stage, planned.backend).inc, event)
    return Emit(IMAGE_GENERATED, generated, key=f"variant-{planned.variant_index}")


def _check_triton_client(protocol: str) -> None:
    """Refuse at start an install without the Triton client (``pip install 'skuforge[cpu]'``): it is
    imported at the first request, and each SKU's ModuleNotFoundError was retried as a handler error,
    then dead-lettered, while the stage looked ready."""
    try:
        importlib.import_module(f"tritonclient.{protocol}")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the generator stage needs the serve extra ({exc.name} is not installed): "
            "pip install 'skuforge[serve]'"
        ) from exc


def build_stage(
    *,
    generation: GenerationSettings | None = None,
    generator: TritonGenerator | None = None,
    **kwargs: Any,
) -> Stage:
    """The stage, ready to run. kwargs go to Stage (settings, store...).

    Triton need not be up yet: until it is, every batch backs off and retries. The Triton client made
    here sends no new request once the stage is stopping (the batch in hand is given up, uncommitted)
    and is closed when the stage stops (its connections and worker threads); a ``generator`` passed in
    is its caller's to close, and hears of no stop.
    """
    generation = generation or load_settings(GenerationSettings)
    settings: Settings = kwargs.pop("settings", None) or load_settings()
    check_images_fit(generation, settings)
    if generator is None:
        _check_triton_client(generation.generation_triton_protocol)
    client = generator or TritonGenerator(
        generation.generation_triton_url,
        protocol=generation.generation_triton_protocol,
        timeout_s=generation.generation_triton_timeout_s,
        concurrency=generation.generation_triton_concurrency,
        metadata_max_age_s=generation.generation_triton_metadata_max_age_s,
        # The answers of two full batches: the one in hand with its redraw rounds, and those of a
        # partition backing off or of a failed batch's SKUs not yet retried alone.
        keep_at_most=2 * settings.max_poll_records * generation.generation_variants_per_sku,
        # Before, a stop waited for the whole batch: up to 16 waves of requests, each up to the timeout.
        stopping=lambda: stage.context.stopping,
    )
    stage = Stage(
        STAGE_NAME,
        settings=settings,
        default_metrics_port=GENERATOR.default_metrics_port,
        ready=lambda: client.last_call_ok,
        **kwargs,
    )
    if generator is None:
        stage.on_stop(client.close)
    # SkuforgeTritonRefusing divides refusals by calls: both start at 0 for every model the mix uses.
    models = [model_name(backend) for backend in generation.shares()]
    for model in models:
        stage.metrics.declare_model(model)
    stage.batch_handler(SKU_CAPTIONED)(
        functools.partial(
            handle_batch,
            generator=client,
            generation=generation,
            metrics=GeneratorMetrics(stage.metrics.registry, models),
        )
    )
    return stage


def main() -> int:
    """Run the generator stage until SIGTERM."""
    return run_stage_loading(GENERATOR.name, GENERATOR.default_metrics_port, build_stage)


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.generator.stage", main))
