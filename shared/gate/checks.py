"""The gate's arithmetic: IoU of two masks and the cheap checks that catch what IoU alone misses.

Pure functions on numpy arrays, no I/O, so each is unit-tested on hand-made masks. Masks are
``uint8`` HxW arrays with 0 for background and 255 for product (what ``shared.images.decode_mask``
returns); anything at or above 128 counts as product. Images are ``uint8`` HxWx3 RGB.

The checks, each reported as a ``GateCheck`` (code, passed, value, threshold, message):

``iou_below_threshold``      IoU(predicted, expected) < ``iou_min``
``mask_empty``               predicted foreground fraction < ``min_foreground_fraction`` (near-empty), or 0
                             whatever the threshold (an empty mask and an empty expected mask score IoU 1)
``mask_full_frame``          predicted foreground fraction > ``max_foreground_fraction`` (most of the frame)
``mask_touches_all_borders`` the predicted mask runs along all four borders (background taken as product)
``drift_unchecked``          the reference photo's product region (under its mask), or the generated image's,
                             has fewer than ``MIN_REGION_PIXELS`` pixels: the colours cannot be compared,
                             so a person looks instead of the item passing unchecked
``product_drift``            colour statistics of the product region differ from the reference photo's
                             product region by more than ``drift_tolerance`` (Lab units, see
                             ``colour_drift``), once the colour gain the generator declares it applied on
                             purpose (a scene match, the scene's light) is applied to the reference
                             too; a declared gain beyond ``MAX_DECLARED_GAIN`` in any channel fails by itself
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from schemas.events import GateCheck
from shared.arith.colour import srgb_to_lab
from shared.arith.masks import mask_iou, mask_on

__all__ = [
    "BORDER_TOUCH_FRACTION",
    "CHECK_CODES",
    "MAX_DECLARED_GAIN",
    "MAX_STATS_PIXELS",
    "MIN_REGION_PIXELS",
    "ColourStats",
    "GateThresholds",
    "borders_touched",
    "colour_drift",
    "colour_stats",
    "drift_check",
    "evaluate",
    "failed_reasons",
    "figures",
    "foreground_fraction",
    "mask_checks",
    "mask_iou",
    "product_stats",
]

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]

# The codes of the checks, in the order ``evaluate`` reports them: the reasons a pending item may carry.
CHECK_CODES = (
    "iou_below_threshold",
    "mask_empty",
    "mask_full_frame",
    "mask_touches_all_borders",
    "drift_unchecked",
    "product_drift",
)
# A border counts as touched when at least this fraction of its pixels is product: a product that
# merely grazes an edge is normal, a mask that runs along an edge is the background.
BORDER_TOUCH_FRACTION = 0.25
# Fewer product pixels than this and colour statistics mean nothing: the drift check is skipped and
# ``drift_unchecked`` fails instead, so the item goes to a reviewer rather than passing unchecked.
MIN_REGION_PIXELS = 64
# Lighting changes (what the generator is allowed to do) move L* most, so ΔL* counts half.
LIGHTNESS_WEIGHT = 0.5
# The most a generator may declare it changed a channel of the product on purpose (either way): the
# composite backend's scene match times its light stays within about 0.55-1.7; more would be
# repainting, not matching.
MAX_DECLARED_GAIN = 2.0
MAX_REPORTED_GAIN = 1e6  # the largest declared gain a failed check reports
# Colour statistics read at most this many of a region's pixels, evenly spread over it: a mean and a
# spread need far fewer than a 40-megapixel photo's product, whose float Lab copies once took
# gigabytes. Below it every pixel is read.
MAX_STATS_PIXELS = 200_000


@dataclass(frozen=True)
class GateThresholds:
    """The limits the checks are held to; ``services/gate/config.py`` sets them globally and per category."""

    iou_min: float = 0.90
    min_foreground_fraction: float = 0.005
    max_foreground_fraction: float = 0.90
    drift_tolerance: float = 20.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_min <= 1.0:
            raise ValueError(f"iou_min must be in [0, 1], got {self.iou_min}")
        if not 0.0 <= self.min_foreground_fraction < self.max_foreground_fraction <= 1.0:
            raise ValueError(
                "need 0 <= min_foreground_fraction < max_foreground_fraction <= 1, got "
                f"{self.min_foreground_fraction} and {self.max_foreground_fraction}"
            )
        # NaN (JSON overrides accept it) would flag every item; inf passes every item, and its
        # threshold would reach the event as JSON null, which every consumer refuses.
        if not 0.0 < self.drift_tolerance < math.inf:
            raise ValueError(f"drift_tolerance must be positive and finite, got {self.drift_tolerance}")

    def with_overrides(self, overrides: Mapping[str, float]) -> GateThresholds:
        """A copy with some limits replaced; unknown names are an error that lists the known ones."""
        known = {item.name for item in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown gate threshold(s) {unknown}; known: {sorted(known)}")
        return replace(self, **dict(overrides))


def foreground_fraction(mask: UInt8Array | BoolArray) -> float:
    """Share of the frame the mask covers, 0..1."""
    on = mask_on(mask)
    return int(np.count_nonzero(on)) / on.size if on.size else 0.0


def borders_touched(mask: UInt8Array | BoolArray, min_fraction: float = BORDER_TOUCH_FRACTION) -> int:
    """How many of the four borders (0..4) have at least ``min_fraction`` of their pixels on."""
    on = mask_on(mask)
    if on.size == 0:
        return 0
    edges = (on[0, :], on[-1, :], on[:, 0], on[:, -1])
    return sum(1 for edge in edges if edge.mean() >= min_fraction and edge.any())


@dataclass(frozen=True)
class ColourStats:
    """Mean and standard deviation of L*, a*, b* over a region, and its size in pixels (all of them,
    though the statistics read at most ``MAX_STATS_PIXELS``)."""

    mean_lab: tuple[float, float, float]
    std_lab: tuple[float, float, float]
    pixels: int


def colour_stats(
    image: UInt8Array, mask: UInt8Array | BoolArray, gain: tuple[float, float, float] | None = None
) -> ColourStats | None:
    """Lab statistics of ``image`` under ``mask``; None when the region is too small to mean anything.

    ``gain`` (per channel, R, G, B) is applied to the pixels first, clipped at 255 as a generator
    clips: the statistics of the region as it looks after a known, deliberate colour change.
    A region of more than ``MAX_STATS_PIXELS`` is read at evenly spaced pixels, the same every time.
    """
    pixels = np.asarray(image)
    on = mask_on(mask)
    if pixels.shape[:2] != on.shape or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image {pixels.shape} and mask {on.shape} do not match (need HxWx3 and HxW)")
    count = int(np.count_nonzero(on))
    if count < MIN_REGION_PIXELS:
        return None
    # Every step-th row and column first (views: nothing copied), then every k-th pixel left, so
    # the region copied is a few times the cap at most and what is converted is within it.
    step = max(1, math.isqrt(count // MAX_STATS_PIXELS))
    region = pixels[::step, ::step][on[::step, ::step]].astype(np.uint8, copy=False)
    if len(region) < MIN_REGION_PIXELS:
        # The grid missed the region (a mask on the odd rows and columns only): every pixel of it
        # instead. Statistics of no pixels were NaN, and the decision failed validation.
        region = pixels[on].astype(np.uint8, copy=False)
    if len(region) > MAX_STATS_PIXELS:
        region = region[:: -(-len(region) // MAX_STATS_PIXELS)]
    if gain is not None:
        region = np.clip(region * np.asarray(gain, dtype=np.float64) + 0.5, 0, 255).astype(np.uint8)
    lab = srgb_to_lab(region).astype(np.float64)
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    return ColourStats(
        mean_lab=(float(mean[0]), float(mean[1]), float(mean[2])),
        std_lab=(float(std[0]), float(std[1]), float(std[2])),
        pixels=count,
    )


def colour_drift(product: ColourStats, reference: ColourStats) -> float:
    """How far the product's colours moved from the reference photo's, in Lab units.

    The distance between the mean colours (ΔL* weighted by ``LIGHTNESS_WEIGHT``, since relighting is
    allowed) plus the distance between the spreads: painting a product over with one flat colour
    collapses the spread even where the mean happens to stay close.
    """
    weights = np.array([LIGHTNESS_WEIGHT, 1.0, 1.0])
    mean_gap = (np.array(product.mean_lab) - np.array(reference.mean_lab)) * weights
    spread_gap = (np.array(product.std_lab) - np.array(reference.std_lab)) * weights
    return float(np.linalg.norm(mean_gap) + np.linalg.norm(spread_gap))


def evaluate(
    *,
    predicted_mask: UInt8Array,
    expected_mask: UInt8Array,
    image: UInt8Array,
    reference_image: UInt8Array,
    reference_mask: UInt8Array,
    thresholds: GateThresholds,
    colour_gain: tuple[float, float, float] | None = None,
) -> tuple[float, list[GateCheck]]:
    """Run every check on one item; returns the IoU and the checks in a fixed order.

    The product region of the generated image is where the expected mask says the product's own
    pixels are; a shifted expected mask therefore also shows up as drift. ``colour_gain`` is what the
    generator declares it applied to the product's colours on purpose (``ImageGenerated.colour_gain``).
    ``mask_checks`` and ``drift_check`` are its two halves, for a caller that decodes the item's
    images one at a time.
    """
    iou, checks = mask_checks(
        predicted_mask=predicted_mask,
        expected_mask=expected_mask,
        reference_mask=reference_mask,
        thresholds=thresholds,
    )
    drift = drift_check(
        product=product_stats(image, expected_mask, predicted_mask),
        reference=colour_stats(reference_image, reference_mask, colour_gain),
        thresholds=thresholds,
        colour_gain=colour_gain,
    )
    return iou, [*checks, drift]


def mask_checks(
    *,
    predicted_mask: UInt8Array,
    expected_mask: UInt8Array,
    reference_mask: UInt8Array,
    thresholds: GateThresholds,
) -> tuple[float, list[GateCheck]]:
    """The IoU and every check but ``product_drift``, in ``CHECK_CODES`` order: all they read is the
    item's three masks."""
    iou = mask_iou(predicted_mask, expected_mask)
    fraction = foreground_fraction(predicted_mask)
    touched = borders_touched(predicted_mask)
    checks = [
        GateCheck(
            code="iou_below_threshold",
            passed=iou >= thresholds.iou_min,
            value=iou,
            threshold=thresholds.iou_min,
            message="IoU of predicted and expected mask {} (need >= {})".format(
                *figures(iou, thresholds.iou_min, 3, "f")
            ),
        ),
        GateCheck(
            code="mask_empty",
            # At a threshold of 0, an empty mask beside an empty expected mask (IoU 1) was accepted.
            passed=fraction > 0 and fraction >= thresholds.min_foreground_fraction,
            value=fraction,
            threshold=thresholds.min_foreground_fraction,
            message="predicted mask covers {} of the frame (need >= {})".format(
                *figures(fraction, thresholds.min_foreground_fraction, 2, "%")
            )
            if fraction > 0
            else "predicted mask is empty: it covers none of the frame",
        ),
        GateCheck(
            code="mask_full_frame",
            passed=fraction <= thresholds.max_foreground_fraction,
            value=fraction,
            threshold=thresholds.max_foreground_fraction,
            message="predicted mask covers {} of the frame (need <= {})".format(
                *figures(fraction, thresholds.max_foreground_fraction, 2, "%")
            ),
        ),
        GateCheck(
            code="mask_touches_all_borders",
            passed=touched < 4,
            value=float(touched),
            threshold=4.0,
            message=f"predicted mask runs along {touched} of 4 borders",
        ),
        _region_check(expected_mask, predicted_mask, reference_mask),
    ]
    return iou, checks


def _region_check(
    expected_mask: UInt8Array, predicted_mask: UInt8Array, reference_mask: UInt8Array
) -> GateCheck:
    """Whether both product regions are large enough for ``product_drift`` to compare their colours.

    Before, a reference mask with (nearly) no product skipped the drift check as passed, and the item
    was accepted with no colour check at all.
    """
    reference_px = int(np.count_nonzero(mask_on(reference_mask)))
    # As ``product_stats`` reads the generated image: under the expected mask, else the predicted one.
    product_px = int(np.count_nonzero(mask_on(expected_mask)))
    if product_px < MIN_REGION_PIXELS:
        product_px = int(np.count_nonzero(mask_on(predicted_mask)))
    where, pixels = (
        ("reference photo", reference_px) if reference_px <= product_px else ("generated image", product_px)
    )
    passed = pixels >= MIN_REGION_PIXELS
    return GateCheck(
        code="drift_unchecked",
        passed=passed,
        value=float(pixels),
        threshold=float(MIN_REGION_PIXELS),
        message=f"product colours compared over {reference_px} reference and {product_px} generated pixels"
        if passed
        else f"the {where} has {pixels} product pixels, fewer than the {MIN_REGION_PIXELS} "
        "a colour comparison needs: product drift unchecked",
    )


def product_stats(
    image: UInt8Array, expected_mask: UInt8Array, predicted_mask: UInt8Array
) -> ColourStats | None:
    """Colour statistics of the generated image's product: under the expected mask, else (an empty
    expected mask is already an IoU failure) under the predicted one."""
    return colour_stats(image, expected_mask) or colour_stats(image, predicted_mask)


def drift_check(
    *,
    product: ColourStats | None,
    reference: ColourStats | None,
    thresholds: GateThresholds,
    colour_gain: tuple[float, float, float] | None,
) -> GateCheck:
    """``product_drift`` from the two regions' statistics: ``product_stats`` of the generated image,
    and ``colour_stats`` of the reference photo under its mask with ``colour_gain`` applied (like
    with like: the reference as the declared, deliberate change leaves it)."""
    tolerance = thresholds.drift_tolerance
    if colour_gain is not None and not all(
        1 / MAX_DECLARED_GAIN <= g <= MAX_DECLARED_GAIN for g in colour_gain
    ):
        shown = ", ".join(_gain_shown(g) for g in colour_gain)
        return GateCheck(
            code="product_drift",
            passed=False,
            # 1 / a subnormal gain is inf, which JSON cannot carry: the figure is capped.
            value=float(min(max(max(colour_gain), 1 / min(colour_gain)), MAX_REPORTED_GAIN)),
            threshold=MAX_DECLARED_GAIN,
            message=f"the generator declares a colour gain of ({shown}) on the product, "
            f"beyond x{MAX_DECLARED_GAIN:g} either way",
        )
    if reference is None or product is None:
        where = "reference photo" if reference is None else "generated image"
        return GateCheck(
            code="product_drift",
            passed=True,
            value=0.0,
            threshold=tolerance,
            # Not a drift failure: ``drift_unchecked`` is the one that fails.
            message=f"skipped: the {where} has fewer than {MIN_REGION_PIXELS} product pixels",
        )
    drift = colour_drift(product, reference)
    return GateCheck(
        code="product_drift",
        passed=drift <= tolerance,
        value=drift,
        threshold=tolerance,
        message="product colours moved {} Lab units from the reference (tolerance {})".format(
            *figures(drift, tolerance, 1, "f")
        )
        + (" with the declared colour gain applied to the reference" if colour_gain is not None else ""),
    )


def _gain_shown(gain: float) -> str:
    """A declared gain at 2 decimals, or at as many more (up to 6, then its full ``repr``) as show a
    refused one outside the bounds and above 0: 2.004 read "2.00" and 0.001 "0.00", "beyond x2 either
    way"."""
    allowed = 1 / MAX_DECLARED_GAIN <= gain <= MAX_DECLARED_GAIN
    for digits in range(2, 7):
        shown = f"{gain:.{digits}f}"
        if (1 / MAX_DECLARED_GAIN <= float(shown) <= MAX_DECLARED_GAIN) == allowed and float(shown) > 0:
            return shown
    return repr(gain)


def figures(value: float, threshold: float, digits: int = 3, kind: str = "f") -> tuple[str, str]:
    """``value`` and ``threshold`` at ``digits`` decimals (``kind`` "f" or "%"), or at as many more
    as tell them apart and show a fraction strictly between 0 and 1 as neither: rounded alike, a flagged
    IoU of 0.8996 read "0.900 (need >= 0.900)"; a mask of a few pixels read "covers 0.00% of the frame"
    and one short of the whole by a pixel "100.00%". A fraction too small for 17 decimals is shown in
    exponent form (1e-28%). A threshold from 0 to 1 says the figures are fractions (an IoU, a share of
    the frame); others are not (a drift of 0.03 Lab units, tolerance 20, reads "0.0" at 1 decimal, as it
    did). The console's check table shows them so too."""
    fraction = 0 <= threshold <= 1
    for places in range(digits, max(digits, 17) + 1):
        shown = f"{value:.{places}{kind}}", f"{threshold:.{places}{kind}}"
        fractions_read_true = not fraction or (
            _reads_as_a_fraction(value, shown[0], kind) and _reads_as_a_fraction(threshold, shown[1], kind)
        )
        if fractions_read_true and (value == threshold or shown[0] != shown[1]):
            return shown
    # 17 decimals still round them alike (values a float barely tells apart), or show a fraction under
    # 1e-17 as none of the frame.
    return (
        shown
        if fractions_read_true
        else (_exponent_form(value, digits, kind), _exponent_form(threshold, digits, kind))
    )


def _reads_as_a_fraction(value: float, shown: str, kind: str) -> bool:
    """Whether ``shown`` reads as ``value`` does against 0 and 1: some of the frame but not all of it
    reads as neither none nor all; other values read as they will."""
    if not 0 < value < 1:
        return True
    read = float(shown.removesuffix("%")) / (100 if kind == "%" else 1)
    return 0 < read < 1


def _exponent_form(value: float, digits: int, kind: str) -> str:
    """``value`` at ``digits`` significant figures, in exponent form where it is far from 1."""
    return f"{value * 100:.{digits}g}%" if kind == "%" else f"{value:.{digits}g}"


def failed_reasons(checks: list[GateCheck]) -> list[str]:
    """Codes of the failed checks, in check order: the reasons a pending item carries."""
    return [check.code for check in checks if not check.passed]
