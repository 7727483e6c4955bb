"""Generators for the generator stage's tests: backends called in this process, no Triton server.

``InProcessGenerator`` draws each variant as the Triton client would have the server draw it; a
backend's refusal raises. ``RefusingGenerator`` returns a refusal as the client does instead, for the
tests of what the stage does with the variants a backend refuses. ``triton_request`` is a request as
PyTriton hands it to the Triton model (``services/generator/server.py:GenerationModel``), and
``triton_variant`` one as the client sends it, ``answered_variant`` one whose answer a test
makes up.

The stage's arrangement: ``arrange_generator`` (a store, the stage's context, its generation
settings), ``captioned_event`` (a captioned SKU on the captioner's topic), ``with_mask`` and
``speckles`` (a photo's mask replaced, by one the compositor cannot place); ``dead_letter_of`` (the
letter the stage's runtime writes for a SKU it refuses).

The compositor's: ``red_box_request`` (a request from a photo of a red box), ``marker_reference`` (a
photo of a magenta product no scene produces, and its mask), ``marker_request`` (a request to draw
from it), ``marker_pixels`` (where the product landed); ``FLAT``, the knobs of a procedural scene whose
expected mask's rows are the product's height.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kafka.structs import TopicPartition

from schemas.envelope import DeadLetter, Envelope, derive_id
from schemas.events import SkuCaptioned
from schemas.topics import SKU_CAPTIONED
from services.generator.client import refusal
from services.generator.protocol import VariantRequest, VariantResult
from services.generator.stage import STAGE_NAME, GenerationClient, handle_batch
from shared.bus import make_envelope
from shared.config import load_settings
from shared.errors import BadInput
from shared.generation.backend import GenerationBackend, GenerationRequest
from shared.generation.composite import CompositeBackend
from shared.generation.settings import GenerationSettings
from shared.observability import StageMetrics
from shared.runtime import Context, Stage
from shared.store import FileStore, ObjectStore
from shared.synth import make_product, render_photo
from tests.support.runtime import _record, _wired

SIZE = 64


def triton_request(seeds: list[int], *, series: str = "") -> dict[str, Any]:
    """One Triton request with a row per seed, as PyTriton hands it to the model (``series``: the
    adapter is chosen by it)."""
    rows = len(seeds)

    def text(value: str) -> np.ndarray:
        return np.array([[value.encode()]] * rows, dtype=object)

    mask = np.zeros((rows, SIZE, SIZE), np.uint8)
    mask[:, 16:48, 16:48] = 255
    return {
        "reference": np.full((rows, SIZE, SIZE, 3), 200, np.uint8),
        "mask": mask,
        "prompt": text("a can"),
        "negative_prompt": text(""),
        "seed": np.array([[seed] for seed in seeds], dtype=np.int64),
        "parameters": text("{}"),
        "adapter_id": text(""),
        "series": text(series),
        "size": np.full((rows, 1), SIZE, np.int32),
    }


def generation_request(variant: VariantRequest) -> GenerationRequest:
    """The backend's request for one variant, from the fields the Triton client sends."""
    return GenerationRequest(
        reference=variant.reference,
        mask=variant.mask,
        prompt=variant.prompt,
        negative_prompt=variant.negative_prompt,
        seed=variant.seed,
        n=1,
        parameters=json.loads(variant.parameters_json),
        adapter_id=variant.adapter_id,
        series=variant.series,
        size=variant.size,
    )


class InProcessGenerator:
    """Backends called in this process, as the Triton client would call the server."""

    def __init__(self, *backends: GenerationBackend) -> None:
        self.backends = {backend.name: backend for backend in backends}

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        """One result per variant, in the order of ``variants``."""
        served = self.backends[backend]
        return [self.draw(served, generation_request(variant)) for variant in variants]

    def forget(self, backend: str, variants: Sequence[VariantRequest]) -> None:
        """Nothing is kept between calls here (``TritonGenerator.forget``)."""

    def draw(self, served: GenerationBackend, request: GenerationRequest) -> VariantResult | BadInput:
        """The one sample ``served`` draws for ``request``."""
        sample = served.generate(request)[0]
        parameters = json.dumps(sample.parameters)
        return VariantResult(
            sample.image, sample.expected_mask, parameters, sample.adapter_id, served.model_id
        )


class RefusingGenerator(InProcessGenerator):
    """As ``InProcessGenerator``, but a variant a backend refuses comes back as the Triton client
    returns it (``refusal`` of the server's ``"<kind>: <message>"``)."""

    def draw(self, served: GenerationBackend, request: GenerationRequest) -> VariantResult | BadInput:
        try:
            return super().draw(served, request)
        except (ValueError, BadInput) as exc:
            kind = BadInput.__name__ if isinstance(exc, BadInput) else type(exc).__name__
            return refusal(f"{kind}: {exc}", f"{served.name} refused variant seed {request.seed}")


def with_mask(store: ObjectStore, captioned: SkuCaptioned, photo_id: str, mask: np.ndarray) -> SkuCaptioned:
    """``captioned`` with ``photo_id``'s mask replaced by ``mask``."""
    ref = store.put_image(f"masks/reference/{captioned.sku.sku_id}/{photo_id}-{mask.sum()}.png", mask)
    photos = [
        photo.model_copy(update={"mask": ref}) if photo.photo_id == photo_id else photo
        for photo in captioned.photos
    ]
    return captioned.model_copy(update={"photos": photos})


def arrange_generator(
    tmp_path: Path,
    *,
    variants_per_sku: int,
    size_px: int,
    min_plain_background: float | None = 0.0,
    backend_mix: dict[str, float] | None = None,
) -> tuple[FileStore, Context, GenerationSettings]:
    """A store in ``tmp_path``, the generator's context over it, and its generation settings:
    ``variants_per_sku`` images of ``size_px`` per SKU, drawn from the photos whose background is at
    least ``min_plain_background`` plain (0: every usable photo; None: the setting's own), from the
    backends of ``backend_mix`` (None: the setting's own)."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    ctx = Context("generator", store, settings, StageMetrics("generator"), logging.getLogger("test"))
    plain = {} if min_plain_background is None else {"generation_min_plain_background": min_plain_background}
    mix = {} if backend_mix is None else {"generation_backend_mix": backend_mix}
    generation = load_settings(
        GenerationSettings,
        generation_variants_per_sku=variants_per_sku,
        generation_size_px=size_px,
        **plain,
        **mix,
    )
    return store, ctx, generation


def captioned_event(captioned: SkuCaptioned, *id_parts: str) -> Envelope[SkuCaptioned]:
    """``captioned`` on the captioner's topic, its event id derived from ``id_parts``."""
    return make_envelope(
        SKU_CAPTIONED,
        captioned,
        event_id=derive_id("test", *id_parts),
        sku_id=captioned.sku.sku_id,
        trace_id="t",
        producer="test",
    )


def dead_letter_of(
    event: Envelope[SkuCaptioned],
    ctx: Context,
    *,
    generator: GenerationClient,
    generation: GenerationSettings,
) -> DeadLetter:
    """The one dead letter the generator stage writes for ``event``: ``handle_batch`` on ``ctx``'s store,
    as ``build_stage`` registers it, with ``generator`` for Triton, run by the runtime
    (``Stage._process_batch``), which names the refusal's class (``error_class``)."""
    stage = Stage(STAGE_NAME, settings=ctx.settings, store=ctx.store)
    stage.batch_handler(SKU_CAPTIONED)(
        functools.partial(handle_batch, generator=generator, generation=generation)
    )
    _, producer = _wired(stage)
    tp = TopicPartition(stage.settings.topic_name(SKU_CAPTIONED), 0)
    stage._process_batch({tp: [_record(tp.topic, 0, event.model_dump_json().encode())]})
    [(_, value)] = producer.acked
    return DeadLetter.model_validate_json(value)


def speckles() -> np.ndarray:
    """A cut-out's transparency of isolated pixels, 1 in 16 of a square: the captioner takes it as the
    photo's mask (2% of the photo, over its no_product_found 0.5%), and most placements of it cover no
    pixel by half or more, which the compositor refuses."""
    mask = np.zeros((192, 192), np.uint8)
    mask[40:150:4, 40:150:4] = 255
    return mask


# The size of triton_variant's request, and of the images served for it.
TRITON_SIZE_PX = 256


def answered_variant(size_px: int) -> VariantRequest:
    """A request whose answer a test makes up (an answer of ``size_px``): a 4x4 reference, as the
    client reads an answer against the size asked for, not against the reference."""
    return VariantRequest(
        reference=np.zeros((4, 4, 3), np.uint8),
        mask=np.full((4, 4), 255, np.uint8),
        prompt="a photo of sks can",
        negative_prompt="blurry",
        seed=7,
        parameters_json="{}",
        adapter_id=None,
        series=None,
        size=size_px,
    )


def triton_variant(
    seed: int, *, mask: np.ndarray | None = None, parameters: dict[str, object] | None = None
) -> VariantRequest:
    """A request as the Triton client sends it: a synthetic product's photo, drawn with ``seed``."""
    photo = render_photo(make_product(3, seed=2), 0, seed=2, size_px=TRITON_SIZE_PX)
    return VariantRequest(
        reference=np.asarray(photo.image),
        mask=photo.mask if mask is None else mask,
        prompt="a photo of sks can",
        negative_prompt="blurry",
        seed=seed,
        parameters_json=json.dumps(parameters or {}),
        adapter_id=None,
        series=None,
        size=TRITON_SIZE_PX,
    )


# A product colour no scene, shadow or distractor produces exactly: with the photometric knobs
# neutral, "pixels of this colour" is an independent measurement of where the product is.
PRODUCT_RGB = np.array([255, 0, 255], dtype=np.int16)


# Any: mypy checks a dict spread into ``marker_request`` against its int keywords (seed, n, size) too.
NEUTRAL_LIGHT: dict[str, Any] = {
    "light_gain": 1.0,
    "light_gradient": 0.0,
    "colour_temperature": 0.0,
    "blur_px": 0.0,
    "noise_sigma": 0.0,
}


def marker_reference(height: int = 300, width: int = 220) -> tuple[np.ndarray, np.ndarray]:
    """A grey photo with a magenta bottle-like product (ellipse on a rectangle) and its mask."""
    yy, xx = np.mgrid[0:height, 0:width]
    body = (xx > 50) & (xx < 170) & (yy > 90) & (yy < 280)
    shoulder = ((xx - 110) / 60.0) ** 2 + ((yy - 90) / 50.0) ** 2 <= 1.0
    mask = np.where(body | shoulder, 255, 0).astype(np.uint8)
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[mask > 0] = PRODUCT_RGB.astype(np.uint8)
    return image, mask


def marker_request(
    reference: np.ndarray,
    mask: np.ndarray,
    *,
    seed: int = 1,
    n: int = 1,
    size: int = 256,
    **parameters: object,
) -> GenerationRequest:
    """A request for ``n`` images of ``size`` px drawn from ``reference`` and its ``mask``."""
    return GenerationRequest(
        reference=reference,
        mask=mask,
        prompt="a photo of sks bottle",
        negative_prompt="",
        seed=seed,
        n=n,
        parameters=dict(parameters),
        size=size,
    )


# Neither turned nor keystoned, unlit and noiseless: the expected mask's rows are the product's height.
FLAT = {
    "scene": "studio",
    "rotation_deg": 0.0,
    "perspective_x": 0.0,
    "perspective_y": 0.0,
    "occluders": 0,
    "shadow": "none",
    "blur_px": 0.0,
    "noise_sigma": 0.0,
}


def red_box_request(**parameters: object) -> GenerationRequest:
    """A request for one 128 px image, with ``parameters``, of a red box on a light grey 60 x 100 photo
    (its mask the box)."""
    reference = np.full((100, 60, 3), 200, np.uint8)
    reference[10:90, 10:50] = (180, 40, 40)
    mask = np.zeros((100, 60), np.uint8)
    mask[10:90, 10:50] = 255
    return GenerationRequest(reference, mask, "", "", seed=1, n=1, parameters=dict(parameters), size=128)


def marker_pixels(image: np.ndarray, tolerance: int = 2) -> np.ndarray:
    """Where ``image`` has the marker product's colour (within ``tolerance``)."""
    return np.all(np.abs(image.astype(np.int16) - PRODUCT_RGB) <= tolerance, axis=-1)


# Over the rendered photos' PNGs (the references are read under it too, about 56 kB) and the
# compositor's 256 px images (about 105 kB), under 256 px of noise (197 kB).
NOISE_MAX_IMAGE_BYTES = 150_000


class Noisy(InProcessGenerator):
    """The compositor, but the variants of ``noisy_seeds`` come back as noise, whose PNG does not
    compress (what a model drawing a busy scene at a large size gives): over ``NOISE_MAX_IMAGE_BYTES``,
    the stage refuses them itself (``too_large_bytes``)."""

    def __init__(self, noisy_seeds: Collection[int]) -> None:
        super().__init__(CompositeBackend(None))
        self.noisy_seeds = noisy_seeds

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        results = super().generate(backend, variants)
        return [
            dataclasses.replace(result, image=noise(variant.seed, result.image.shape))
            if variant.seed in self.noisy_seeds and isinstance(result, VariantResult)
            else result
            for variant, result in zip(variants, results, strict=True)
        ]


def noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels of ``shape`` drawn at random from ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def arranged_for_noise(
    tmp_path: Path, variants_per_sku: int
) -> tuple[FileStore, Context, GenerationSettings]:
    """``arrange_generator``'s store, context and settings, 256 px images read under
    ``NOISE_MAX_IMAGE_BYTES``: the compositor's pass, ``Noisy``'s do not."""
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=variants_per_sku, size_px=256)
    ctx = dataclasses.replace(
        ctx, settings=ctx.settings.model_copy(update={"max_image_bytes": NOISE_MAX_IMAGE_BYTES})
    )
    return store, ctx, generation
