"""Gate: decides whether a matted image is good enough to train on, or needs a person.

Consumes: ``image.matted``.
Produces: ``gate.accepted`` when every check passes, else ``correction.pending`` carrying the
codes of the failed checks (``reasons``) and every check's figure and threshold (``checks``).
Writes nothing to the object store.

The checks (``shared/gate/checks.py``): IoU of the predicted mask against the generator's expected
mask (default at least 0.90), an empty or near-empty mask, a mask covering most of the frame, a
mask running along all four borders, and product drift (Lab colour statistics of the product
region against the reference photo's product region; an item with too few product pixels to compare
is flagged ``drift_unchecked``, not accepted unchecked). Thresholds are ``SKUFORGE_GATE_*``
(``services/gate/config.py``), globally and per SKU category.

Bad input goes to the DLQ with its reason: a mask or image missing from the store
(``object_missing``), bytes that do not match the event's sha256 (``checksum_mismatch``), bytes
that are not an image (``not_an_image``, ``corrupt``...), more pixels than ``SKUFORGE_MAX_IMAGE_PIXELS``
(``too_many_pixels``) or bytes than ``SKUFORGE_MAX_IMAGE_BYTES`` (``too_large_bytes``) by the event's
own figures (refused before any of the item's objects is read), or an image or mask whose size is
not the one the event states, or masks and images whose sizes disagree (``dimension_mismatch``). The
detail names the object refused (``predicted mask``, ``expected mask``, ``image``, ``reference image``
or ``reference mask``, and its uri; of sizes that differ, each object with its stated size and uri).
The masks are read first, and the two images one at a time.

Metrics beside the runtime's: ``skuforge_gate_iou`` (histogram of IoU), ``skuforge_gate_decisions_total``
(by decision) and ``skuforge_gate_flags_total`` (failed checks, by reason).
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from schemas.common import ImageRef
from schemas.envelope import Envelope
from schemas.events import CorrectionPending, GateAccepted, ImageGenerated, ImageMatted
from schemas.flow import GATE
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED, IMAGE_MATTED
from services.gate.config import GateSettings
from shared.config import load_settings
from shared.errors import BadInput, naming
from shared.gate.checks import (
    CHECK_CODES,
    ColourStats,
    colour_stats,
    drift_check,
    failed_reasons,
    mask_checks,
    product_stats,
)
from shared.images import UInt8Array, pixel_array
from shared.runtime import Context, Emit, Stage, run_stage, stage_command

IOU_BUCKETS = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)
GATE_DECISIONS = ("accepted", "pending")


class GateMetrics:
    """The gate's own metrics, in the stage's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.iou = Histogram(
            "skuforge_gate_iou",
            "IoU of predicted and expected mask per item.",
            buckets=IOU_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "skuforge_gate_decisions_total",
            "Items by decision (accepted, pending).",
            ["decision"],
            registry=registry,
        )
        self.flags = Counter(
            "skuforge_gate_flags_total",
            "Failed checks by reason; a pending item counts once per failed check.",
            ["reason"],
            registry=registry,
        )
        # Both decisions and every reason from 0, so the flag-share alert and the flags-by-reason
        # panel count the first of each after a restart (a series born at 1 shows no increase).
        for decision in GATE_DECISIONS:
            self.decisions.labels(decision)
        for reason in CHECK_CODES:
            self.flags.labels(reason)


def handle(
    event: Envelope[ImageMatted], ctx: Context, *, gate: GateSettings, metrics: GateMetrics
) -> list[Emit]:
    """Measure one matted item and route it to ``gate.accepted`` or ``correction.pending``."""
    matted = event.payload
    generated = matted.generated
    # What the event's own figures refuse (too many pixels, too many bytes), for all five objects
    # before any is read: at 40 MP reading an item peaks at about 0.4 GB (its three 40 MB masks held
    # while each 120 MB image decodes), wasted on an item refused for its last object.
    # Each says what it is read for at its stated size: the reference photo's refusal said it "is
    # compared pixel by pixel", and it is read for its colours alone.
    for name, ref, why in (
        ("predicted mask", matted.predicted_mask, "it is compared pixel by pixel with the expected mask"),
        ("expected mask", generated.expected_mask, "it is compared pixel by pixel with the predicted mask"),
        ("image", generated.image, "its product's colours are read under its masks"),
        ("reference image", generated.reference_image, "its product's colours are read under its mask"),
        ("reference mask", generated.reference_mask, "its photo's product colours are read under it"),
    ):
        with naming(name, ref.uri):
            ctx.refuse_unread(ref, why)
    # Masks are compared pixel by pixel with their image, and each object is read only at the size the
    # event states (``_read``): stated sizes that differ refuse the item before any object is decoded.
    _same_size(
        ("image", generated.image),
        ("predicted mask", matted.predicted_mask),
        ("expected mask", generated.expected_mask),
    )
    _same_size(("reference image", generated.reference_image), ("reference mask", generated.reference_mask))
    # The masks, and every check that needs only them, before either image is decoded: an item
    # refused for a mask never decodes one, and the images (each 120 MB at 40 MP, as many again
    # while decoding) are decoded one at a time, each freed once its colours are measured.
    predicted_mask = _read(ctx, "predicted mask", matted.predicted_mask, mask=True)
    expected_mask = _read(ctx, "expected mask", generated.expected_mask, mask=True)
    reference_mask = _read(ctx, "reference mask", generated.reference_mask, mask=True)
    thresholds = gate.thresholds_for(generated.sku.category)
    iou, checks = mask_checks(
        predicted_mask=predicted_mask,
        expected_mask=expected_mask,
        reference_mask=reference_mask,
        thresholds=thresholds,
    )
    drift = drift_check(
        reference=_reference_colours(ctx, generated, reference_mask),
        product=_product_colours(ctx, generated, expected_mask, predicted_mask),
        thresholds=thresholds,
        colour_gain=generated.colour_gain,
    )
    checks.append(drift)
    reasons = failed_reasons(checks)

    def count() -> None:
        metrics.iou.observe(iou)
        ctx.metrics.images.labels(ctx.stage, generated.backend).inc()
        for reason in reasons:
            metrics.flags.labels(reason).inc()
        metrics.decisions.labels("pending" if reasons else "accepted").inc()

    # Once the decision is committed: a batch rewound after a failed send runs this handler again.
    ctx.after_commit(count)
    if not reasons:
        return [Emit(GATE_ACCEPTED, GateAccepted(matted=matted, iou=iou, checks=checks), key="decision")]
    ctx.log.info("flagged for correction", extra={"item_id": generated.item_id, "reasons": reasons})
    pending = CorrectionPending(matted=matted, iou=iou, checks=checks, reasons=reasons)
    return [Emit(CORRECTION_PENDING, pending, key="decision")]


def _reference_colours(
    ctx: Context, generated: ImageGenerated, reference_mask: UInt8Array
) -> ColourStats | None:
    """The reference photo's product colours, the declared colour gain applied; the photo is freed
    on return."""
    reference_image = _read(ctx, "reference image", generated.reference_image, mask=False)
    return colour_stats(reference_image, reference_mask, generated.colour_gain)


def _product_colours(
    ctx: Context, generated: ImageGenerated, expected_mask: UInt8Array, predicted_mask: UInt8Array
) -> ColourStats | None:
    """The generated image's product colours; the image is freed on return."""
    image = _read(ctx, "image", generated.image, mask=False)
    return product_stats(image, expected_mask, predicted_mask)


def _read(ctx: Context, name: str, ref: ImageRef, *, mask: bool) -> UInt8Array:
    """The image or mask ``ref`` points at, refused unless it is the size the event states: passed
    on, such an item reached a reviewer and only then was refused by the trainstore."""
    with naming(name, ref.uri):
        pixels = ctx.read_mask(ref) if mask else pixel_array(ctx.read_image(ref))
    height, width = pixels.shape[:2]
    if (width, height) != (ref.width, ref.height):
        raise BadInput(
            "dimension_mismatch",
            f"{name} {ref.uri} is {width}x{height}, the event says {ref.width}x{ref.height}",
        )
    return pixels


def _same_size(*named: tuple[str, ImageRef]) -> None:
    """Masks are compared pixel by pixel, so the event must state them the size of their image. The
    refusal names each object with its uri, as every other refusal of the gate does."""
    sizes = {name: (ref.height, ref.width) for name, ref in named}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{name} {ref.height}x{ref.width} (HxW) at {ref.uri}" for name, ref in named)
        raise BadInput("dimension_mismatch", f"the event states sizes that differ: {shown}")


def build_stage(*, gate: GateSettings | None = None, **kwargs: Any) -> Stage:
    """The stage, ready to run; kwargs go to Stage (settings, store...)."""
    gate = gate or load_settings(GateSettings)
    stage = Stage(GATE.name, default_metrics_port=GATE.default_metrics_port, **kwargs)
    metrics = GateMetrics(stage.metrics.registry)
    stage.handler(IMAGE_MATTED)(functools.partial(handle, gate=gate, metrics=metrics))
    return stage


def main() -> int:
    """Run the gate stage until SIGTERM."""
    return run_stage(build_stage())


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.gate.stage", main))
