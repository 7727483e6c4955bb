"""Matting: U2-Net in ONNX Runtime predicts where the product is in every generated image.

Consumes: ``image.generated``.
Produces: ``image.matted``, after writing two PNGs per image to the object store, under keys
derived from the item and the first 16 hex digits of the PNG's sha256: a redelivered event with the
same result writes the same keys, and a second run with another result (a redeployed model or
threshold, a replay, a re-render of the item) goes beside the first, which events already sent (to
the gate, or waiting for a person) still name:

* ``masks/predicted/<sku_id>/<item_id>-<sha16>.png``  the predicted mask (0 background, 255 product)
* ``cutouts/<sku_id>/<item_id>-<sha16>.png``          RGBA: the image with that mask as alpha

with the foreground fraction, the mean confidence over the mask, and the model id (file name
and sha256) for lineage. The gate compares that mask with the event's expected mask.

Region of interest (``SKUFORGE_MATTING_ROI``, on by default): the model mats the square box
around the expected mask's bounding box, ``SKUFORGE_MATTING_ROI_MARGIN`` product sizes wider on
each side (0.25), not the whole image; the mask is zero outside it. A salient-object model given
a whole shelf cuts out the neighbours with the product; in the box, the product is what fills
it. The box says where to look, not what shape to find (``shared/matting/roi.py``). An event
whose expected mask is empty is matted whole; one whose expected mask cannot be read is refused
like an unreadable image (the gate could not judge it either).

Bad input goes to the DLQ with its reason, and the stream goes on: an image missing from the
store (``object_missing``), bytes that do not match the event's sha256 (``checksum_mismatch``),
bytes that are not an acceptable image (``empty``, ``not_an_image``, ``corrupt``, ``truncated``,
``too_many_pixels``, ``too_large_bytes``... see ``shared/images.py``), an image of another size
than the event says (``dimension_mismatch``), or one the model gives NaN or infinity for while it
still mats its blank warm-up image (``model_output_not_finite``: the image, not the model, so
/readyz stays up); docs/matting.md lists them all. A model that fails on that blank image too
(``MattingModelBroken``: a GPU whose driver fell over) is the deployment's fault, not the events':
they are retried until it runs again, never dead-lettered. An image the event
says is over ``SKUFORGE_MAX_IMAGE_PIXELS`` is ``too_many_pixels`` before it is read, a JPEG too: its
mask must be at its own size, so it is not decoded scaled down here. An image, or (matting in a
box) its expected mask, the event says is over that or ``SKUFORGE_MAX_IMAGE_BYTES`` is refused
before either is read. Odd but valid images (16-bit, CMYK, palette, grayscale) are converted and
matted.

The model: ``SKUFORGE_MATTING_MODEL`` (a path, an s3:// or file:// URI, or a registered name;
unset = the project's U2-NetP, ``shared/matting/models/u2netp-skuforge.onnx``; a URI's copy is kept in
``SKUFORGE_MATTING_CACHE_DIR``, unset = ``<system temp>/skuforge-models``), run on CUDA when
available and ``SKUFORGE_MATTING_USE_GPU`` allows it. Threshold, clean-up and batch size are the
other ``SKUFORGE_MATTING_*`` settings (``services/matting/config.py``); the sessions themselves
live in ``shared/matting/session.py``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image
from prometheus_client import CollectorRegistry, Histogram

from schemas.common import ImageRef
from schemas.envelope import Envelope
from schemas.events import ImageGenerated, ImageMatted
from schemas.flow import MATTING
from schemas.topics import IMAGE_GENERATED, IMAGE_MATTED
from services.matting.config import MattingSettings
from shared import keys
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput, TransientError, named, naming
from shared.matting.roi import Box, product_box
from shared.matting.session import (
    MaskOptions,
    MattingModelError,
    MattingResult,
    MattingSession,
    open_session,
)
from shared.runtime import Context, Emit, Stage, run_stage_loading, stage_command
from shared.store import ObjectStore

# The ``model`` label of the stage's model call metrics (``skuforge_model_seconds``, ``_batch_size``).
MODEL_LABEL = "matting"
FRACTION_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0)

log = logging.getLogger("skuforge.matting")


class MattingMetrics:
    """Mask statistics, in the stage's registry: a drifting model shows here before the gate flags it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.foreground_fraction = Histogram(
            "skuforge_matting_foreground_fraction",
            "Share of the image's pixels the predicted mask calls product.",
            buckets=FRACTION_BUCKETS,
            registry=registry,
        )
        self.mean_confidence = Histogram(
            "skuforge_matting_mean_confidence",
            "Mean model confidence over the predicted mask's pixels; an empty mask, which has none, is not "
            "counted.",
            buckets=FRACTION_BUCKETS,
            registry=registry,
        )


def open_matting_session(
    matting: MattingSettings, settings: Settings, store: ObjectStore | None = None
) -> MattingSession:
    """Open and warm up the configured model; a missing or unusable model is a ConfigError."""
    try:
        session = open_session(
            matting.matting_model,
            threads=matting.matting_threads,
            use_gpu=matting.matting_use_gpu,
            store=store,
            max_batch=matting.matting_max_batch,
            mask=MaskOptions(
                threshold=matting.matting_threshold,
                cleanup=matting.matting_cleanup,
                min_blob_fraction=matting.matting_min_blob_fraction,
            ),
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
            cache_unused_days=settings.model_cache_unused_days,
            cache=matting.matting_cache_dir,
            cache_from="SKUFORGE_MATTING_CACHE_DIR",
            uri_from="SKUFORGE_MATTING_MODEL",
        )
        session.warm_up()
    except MattingModelError as exc:
        raise ConfigError(str(exc)) from exc
    log.info("matting model ready", extra={"model_id": session.model_id, "providers": session.providers})
    # The session's batch, not the setting's: a file exported with a fixed batch caps it.
    if session.max_batch > settings.max_poll_records:
        # The runtime hands the handler one poll's records; a larger batch was silently never reached.
        log.warning(
            "SKUFORGE_MATTING_MAX_BATCH=%d is more than a poll brings (SKUFORGE_MAX_POLL_RECORDS=%d): "
            "calls take at most %d images; raise both for larger GPU batches",
            matting.matting_max_batch,
            settings.max_poll_records,
            settings.max_poll_records,
        )
    return session


def handle_batch(
    events: Sequence[Envelope[ImageGenerated]],
    ctx: Context,
    *,
    session: MattingSession,
    roi_margin: float | None = None,
    metrics: MattingMetrics | None = None,
) -> list[list[Emit] | BadInput]:
    """Mat each event's image; an image that cannot be read or decoded, or that the model gives NaN
    for (``model_output_not_finite``, ``MattingSession.predict_each``), refuses only its own event. A
    chunk the model fails on together is matted one image a call (``Context.together_or_alone``).

    Events are taken ``session.max_batch`` at a time, so one ``predict`` serves a chunk (one ORT
    call, or on CPU calls of at most ``CPU_CALL_IMAGES``) and only one chunk of decoded images is
    held in memory. Once the stage is stopping no chunk is started: the batch is given up
    (``TransientError``), its events left uncommitted. ``roi_margin``: mat the box around each
    event's expected mask (None: the whole image).
    """
    results: list[list[Emit] | BadInput] = []
    for first in range(0, len(events), session.max_batch):
        if ctx.stopping:
            # A poll's chunks at the pixel limit take longer than a pod's grace (docs/deploy.md): the
            # batch is given up, uncommitted, and the next run or the partition's next owner mats it.
            raise TransientError(f"the stage is stopping: {len(events) - first} images left unmatted")
        chunk = events[first : first + session.max_batch]
        inputs = [_read_input(event, ctx, roi_margin) for event in chunk]
        accepted = [read for read in inputs if not isinstance(read, BadInput)]
        predictions: Iterator[MattingResult | BadInput] = iter([])
        if accepted:  # a chunk refused whole makes no model call, so none is counted
            predictions = iter(
                ctx.together_or_alone(
                    MODEL_LABEL,
                    accepted,
                    lambda reads: session.predict_each(
                        [image for image, _ in reads], boxes=[box for _, box in reads]
                    ),
                )
            )
        for event, read in zip(chunk, inputs, strict=True):
            if isinstance(read, BadInput):
                results.append(read)
                continue
            image = read[0]
            prediction = next(predictions)
            if isinstance(prediction, BadInput):  # the model gave NaN for this image alone
                results.append(named(prediction, "image", event.payload.image.uri))
                continue
            generated = event.payload
            matted = ImageMatted(
                generated=generated,
                predicted_mask=ctx.store.put_image(
                    keys.predicted_mask_key(event.sku_id, generated.item_id),
                    prediction.mask,
                    digest_in_key=True,
                ),
                cutout=ctx.store.put_image(
                    keys.cutout_key(event.sku_id, generated.item_id),
                    prediction.cutout(image),
                    digest_in_key=True,
                ),
                foreground_fraction=prediction.foreground_fraction,
                mean_confidence=prediction.mean_confidence,
                matting_model_id=session.model_id,
            )
            # Counted once the input is committed, not at each attempt (a rewound batch runs again).
            ctx.after_commit(ctx.metrics.images.labels(ctx.stage, generated.backend).inc, event)
            if metrics is not None:
                ctx.after_commit(
                    functools.partial(metrics.foreground_fraction.observe, prediction.foreground_fraction),
                    event,
                )
                if prediction.foreground_fraction > 0:  # an empty mask has no pixels to be sure of
                    ctx.after_commit(
                        functools.partial(metrics.mean_confidence.observe, prediction.mean_confidence), event
                    )
            results.append([Emit(IMAGE_MATTED, matted, key="matted")])
    return results


def _read_input(
    event: Envelope[ImageGenerated], ctx: Context, roi_margin: float | None
) -> tuple[Image.Image, Box | None] | BadInput:
    """The event's image, and the box to mat (None: all of it).

    The image, and the expected mask when there is a box to find, are refused on the event's figures
    before either is read (``Context.refuse_unread``), and so is a mask the event states at a size
    other than its image's.
    """
    ref = event.payload.expected_mask
    try:
        # Named as the gate and the trainstore name them: an event points at both, the letter says which.
        with naming("image", event.payload.image.uri):
            ctx.refuse_unread(event.payload.image, "its mask must be at its own size")
        if roi_margin is not None:
            with naming("expected mask", ref.uri):
                ctx.refuse_unread(ref, "it must be its image's size")
    except BadInput as refusal:
        return refusal
    stated = (event.payload.image.width, event.payload.image.height)
    if roi_margin is not None and (ref.width, ref.height) != stated:
        return _mask_mismatch(ref, ref.width, ref.height, event.payload.image)
    image = _read_image(event, ctx)
    if isinstance(image, BadInput):
        return image
    if roi_margin is None:
        return image, None
    try:
        with naming("expected mask", ref.uri):
            expected = ctx.read_mask(ref)
    except BadInput as refusal:
        return refusal
    if expected.shape != (image.height, image.width):
        return _mask_mismatch(ref, expected.shape[1], expected.shape[0], event.payload.image)
    return image, product_box(expected, roi_margin)


def _mask_mismatch(ref: ImageRef, width: int, height: int, image: ImageRef) -> BadInput:
    """The refusal of an expected mask ``width`` x ``height`` (stated or decoded) for ``image``."""
    return BadInput(
        "dimension_mismatch",
        f"expected mask {ref.uri} is {width}x{height}, the image {image.width}x{image.height}",
    )


def _read_image(event: Envelope[ImageGenerated], ctx: Context) -> Image.Image | BadInput:
    """The event's image, checked against its sha256 and dimensions, decoded within the limits."""
    ref = event.payload.image
    try:
        with naming("image", ref.uri):
            image = ctx.read_image(ref)
    except BadInput as refusal:
        return refusal
    if image.size != (ref.width, ref.height):
        return BadInput(
            "dimension_mismatch",
            f"image {ref.uri} is {image.width}x{image.height}, the event says {ref.width}x{ref.height}",
        )
    return image


def build_stage(
    *, matting: MattingSettings | None = None, session: MattingSession | None = None, **kwargs: Any
) -> Stage:
    """The stage, ready to run; the model is opened (or ``session`` used) before it joins the group.

    kwargs go to Stage (settings, store...).
    """
    matting = matting or load_settings(MattingSettings)
    settings: Settings = kwargs.pop("settings", None) or load_settings()
    model = session or open_matting_session(matting, settings, kwargs.get("store"))
    stage = Stage(
        MATTING.name,
        settings=settings,
        default_metrics_port=MATTING.default_metrics_port,
        ready=lambda: model.ready,
        **kwargs,
    )
    # From 0, so rate() counts the first call after a restart (a series born at 1 shows no increase).
    stage.metrics.declare_model(MODEL_LABEL)
    roi_margin = matting.matting_roi_margin if matting.matting_roi else None
    stage.batch_handler(IMAGE_GENERATED)(
        functools.partial(
            handle_batch, session=model, roi_margin=roi_margin, metrics=MattingMetrics(stage.metrics.registry)
        )
    )
    return stage


def main() -> int:
    """Run the matting stage until SIGTERM."""
    return run_stage_loading(MATTING.name, MATTING.default_metrics_port, build_stage)


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.matting.stage", main))
