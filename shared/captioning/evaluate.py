"""How faithful the attribute captions are, measured on renderer products with known truth.

Each product of a synthetic catalogue (``shared/synth``) goes through the captioner's real path:
the rendered photo, a mask (from a matting session, or the renderer's exact mask to separate
matting errors from attribute errors), ``describe_product``, then ``compose_caption``. The first
colour word of the caption is compared with the product's main label colour and the measured
shape with its packaging shape. Used by ``tests/test_captioner_accuracy.py`` and
``bench/captioner.py``.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.common import SkuMetadata
from shared.captioning.attributes import ACHROMATIC_NAMES, COLOUR_TABLE, SHAPE_NAMES, describe_product
from shared.captioning.prompts import compose_caption
from shared.matting.session import MattingSession
from shared.synth import make_product, render_photo
from shared.synth.products import ProductSpec

__all__ = ["AccuracyReport", "first_colour_in", "renderer_accuracy"]

COLOUR_NAMES = frozenset((*COLOUR_TABLE, *ACHROMATIC_NAMES))


def first_colour_in(caption: str) -> str | None:
    """The first colour name a caption mentions, or None."""
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in COLOUR_NAMES:
            return word
    return None


@dataclass
class AccuracyReport:
    """Caption accuracy over ``n_products``, with the shape confusion matrix and the misses."""

    n_products: int
    colour_accuracy: float
    shape_accuracy: float
    shape_confusion: dict[str, dict[str, int]]
    seconds_per_photo: float
    colour_misses: list[dict[str, Any]] = field(default_factory=list)
    shape_misses: list[dict[str, Any]] = field(default_factory=list)


def _photos(
    n_products: int, seed: int, size_px: int, photo_index: int
) -> Iterator[tuple[ProductSpec, Any, npt.NDArray[np.uint8]]]:
    for index in range(n_products):
        spec = make_product(index, seed)
        photo = render_photo(spec, photo_index, seed, size_px)
        yield spec, photo.image, photo.mask


def renderer_accuracy(
    n_products: int,
    seed: int,
    *,
    session: MattingSession | None,
    size_px: int = 512,
    photo_index: int = 0,
) -> AccuracyReport:
    """Score the captions of ``n_products`` products of catalogue ``seed`` (one photo each).

    ``session`` None uses the renderer's exact masks instead of predicted ones.
    """
    truths: list[str] = [name for name in SHAPE_NAMES if name != "other"]
    confusion: dict[str, dict[str, int]] = {truth: dict.fromkeys(SHAPE_NAMES, 0) for truth in truths}
    colour_hits = shape_hits = 0
    report = AccuracyReport(n_products, 0.0, 0.0, confusion, 0.0)
    spent = 0.0
    photos = _photos(n_products, seed, size_px, photo_index)
    # Eight photos per matting call, rendered as they are needed: 200 photos at 512 px stay out of memory.
    while batch := list(itertools.islice(photos, 8)):
        started = time.perf_counter()
        if session is not None:
            masks = [result.mask for result in session.predict([image for _, image, _ in batch])]
        else:
            masks = [mask for _, _, mask in batch]
        for (spec, image, _), mask in zip(batch, masks, strict=True):
            if not mask.any():
                shape, colour = "other", None
            else:
                attributes = describe_product(image, mask)
                shape = attributes.shape.shape
                sku = SkuMetadata(**spec.metadata())
                colour = first_colour_in(
                    compose_caption(sku, attributes.colour_names[:3], shape, attributes.view)
                )
            confusion[spec.shape][shape] += 1
            if colour == spec.main_colour:
                colour_hits += 1
            else:
                report.colour_misses.append(
                    {"sku_id": spec.sku_id, "truth": spec.main_colour, "caption": colour}
                )
            if shape == spec.shape:
                shape_hits += 1
            else:
                report.shape_misses.append({"sku_id": spec.sku_id, "truth": spec.shape, "measured": shape})
        spent += time.perf_counter() - started
    report.colour_accuracy = round(colour_hits / max(n_products, 1), 4)
    report.shape_accuracy = round(shape_hits / max(n_products, 1), 4)
    report.seconds_per_photo = round(spent / max(n_products, 1), 4)
    return report
