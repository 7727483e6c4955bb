"""How faithful the attribute captions are, on renderer products and on real product photos.

Renderer (``renderer_accuracy``): each product of a synthetic catalogue (``shared/synth``) goes
through the captioner's real path: the rendered photo, a mask (from a matting session, or the
renderer's exact mask to separate matting errors from attribute errors), ``describe_product``, then
``compose_caption``. The first colour word of the caption is compared with the product's main label
colour and the measured shape with its packaging shape.

Real photos (``real_accuracy``): rows of a hand-labelled truth table (``read_truth_table``, e.g.
``bench/data/captioner_real/truth.csv`` over GroceryStoreDataset's catalogue photos) go through the
same path with the matting session's masks. A row's colour is right when the caption's first colour
is one of its acceptable colours, its packaging when the measured shape expresses the labelled
packaging (``PACKAGING_SHAPES``).

Used by ``tests/test_captioner_accuracy.py`` and ``bench/captioner.py``.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from schemas.common import SkuMetadata
from shared.captioning.attributes import (
    ACHROMATIC_NAMES,
    COLOUR_TABLE,
    PACKAGE_SHAPES,
    SHAPE_NAMES,
    describe_product,
)
from shared.captioning.prompts import compose_caption
from shared.images import decode_image
from shared.synth import make_product, render_photo
from shared.synth.products import ProductSpec

__all__ = [
    "PACKAGING_SHAPES",
    "AccuracyReport",
    "MaskPredictor",
    "MaskResult",
    "RealProduct",
    "RealReport",
    "caption_shape_and_colour",
    "first_colour_in",
    "read_truth_table",
    "real_accuracy",
    "renderer_accuracy",
]

COLOUR_NAMES = frozenset((*COLOUR_TABLE, *ACHROMATIC_NAMES))


class MaskResult(Protocol):
    """One image's mask: HxW, 0 background / 255 product (``shared.matting.session.MattingResult``)."""

    @property
    def mask(self) -> npt.NDArray[np.uint8]: ...


class MaskPredictor(Protocol):
    """What the scoring takes to mask photos: a matting session (``shared.matting.session.open_session``),
    opened by the caller; the captioning library does not open another library's model."""

    def predict(self, images: Sequence[Image.Image]) -> Sequence[MaskResult]: ...


# Which measured shapes express each packaging word of a truth table. A silhouette cannot tell a
# paperboard carton from a cardboard box (``prompts._SHAPE_WORDS`` reads "carton" as box too), a
# tub from a jar, or a bag from a pouch; the class noun ("milk carton") names the material.
PACKAGING_SHAPES: Final[Mapping[str, frozenset[str]]] = {
    "carton": frozenset({"box"}),
    "box": frozenset({"box"}),
    "bottle": frozenset({"bottle"}),
    "jar": frozenset({"jar"}),
    "tub": frozenset({"jar"}),
    "can": frozenset({"can"}),
    "bag": frozenset({"pouch"}),
    "pouch": frozenset({"pouch"}),
    "loose produce": frozenset({"produce"}),
}


def first_colour_in(caption: str) -> str | None:
    """The first colour name a caption mentions, or None."""
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in COLOUR_NAMES:
            return word
    return None


def caption_shape_and_colour(
    image: Image.Image | npt.NDArray[np.uint8], mask: npt.NDArray[Any], sku: SkuMetadata
) -> tuple[str, str | None]:
    """The shape the captioner gives the product ``mask`` marks on ``image``, and the first colour of the
    caption it composes for ``sku``; ``("other", None)`` for an empty mask."""
    if not mask.any():
        return "other", None
    attributes = describe_product(image, mask)
    shape = attributes.shape.shape
    return shape, first_colour_in(compose_caption(sku, attributes.colour_names[:3], shape, attributes.view))


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
    session: MaskPredictor | None,
    size_px: int = 512,
    photo_index: int = 0,
) -> AccuracyReport:
    """Score the captions of ``n_products`` products of catalogue ``seed`` (one photo each).

    ``session`` None uses the renderer's exact masks instead of predicted ones.
    """
    truths: list[str] = list(PACKAGE_SHAPES)
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
            shape, colour = caption_shape_and_colour(image, mask, SkuMetadata(**spec.metadata()))
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


# --- real photos -------------------------------------------------------------------------------

TRUTH_COLUMNS: Final = ("class_name", "path", "colour", "alt_colour", "packaging")
# The category every real row is captioned with: neutral, so no colour word ("red grapefruit")
# can leak from the class name into the caption's first colour.
REAL_CATEGORY: Final = "grocery product"


@dataclass(frozen=True)
class RealProduct:
    """One hand-labelled real photo: where it is, its acceptable colours and its packaging."""

    class_name: str
    path: str
    colours: tuple[str, ...]
    packaging: str
    sha256: str | None = None  # of the photo labelled; another file at ``path`` is refused


def read_truth_table(path: Path) -> list[RealProduct]:
    """Rows of a truth CSV (``TRUTH_COLUMNS``, and optionally ``sha256`` of each photo); ``ValueError``
    names the row of any unknown word, and of a row with more or fewer fields than the header.

    A spreadsheet's "CSV UTF-8" starts with a byte-order mark, which is not part of the first column's
    name (it read as a missing ``class_name``)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or ()
        missing = set(TRUTH_COLUMNS) - set(header)
        if missing:
            raise ValueError(
                f"{path}: missing columns {sorted(missing)}; expected {', '.join(TRUTH_COLUMNS)}"
            )
        products = []
        for line, row in enumerate(reader, start=2):
            # DictReader fills a short row with None (an AttributeError below) and files a long one's
            # extra fields under None: either way its fields are not where the header says.
            if None in row or None in row.values():
                fewer = None in row.values()
                raise ValueError(
                    f"{path}:{line}: {'fewer' if fewer else 'more'} fields than the {len(header)} columns "
                    f"of the header ({', '.join(header)})"
                )
            colours = tuple(c for c in (row["colour"].strip(), row["alt_colour"].strip()) if c)
            unknown = [c for c in colours if c not in COLOUR_NAMES]
            if not colours or unknown:
                raise ValueError(
                    f"{path}:{line}: colour {unknown or '(none)'} is not one of {sorted(COLOUR_NAMES)}"
                )
            if row["packaging"] not in PACKAGING_SHAPES:
                raise ValueError(
                    f"{path}:{line}: packaging {row['packaging']!r} is not one of {sorted(PACKAGING_SHAPES)}"
                )
            digest = (row.get("sha256") or "").strip() or None
            products.append(RealProduct(row["class_name"], row["path"], colours, row["packaging"], digest))
    return products


@dataclass
class RealReport:
    """Caption accuracy over ``n_real_products`` real photos, with every miss."""

    n_real_products: int
    colour_accuracy: float
    packaging_accuracy: float
    seconds_per_photo: float
    colour_misses: list[dict[str, Any]] = field(default_factory=list)
    packaging_misses: list[dict[str, Any]] = field(default_factory=list)


def _labelled_photo(dataset_dir: Path, product: RealProduct) -> bytes:
    """The bytes of the photo a truth row labels; ``ValueError`` when the file there is another one (a
    re-encoded or different copy of the dataset would silently change the figures)."""
    data = (dataset_dir / product.path).read_bytes()
    if product.sha256 is not None and hashlib.sha256(data).hexdigest() != product.sha256:
        raise ValueError(
            f"{dataset_dir / product.path}: not the photo the truth table labelled (sha256 differs); "
            "use GroceryStoreDataset as published (GitHub marcusklasson/GroceryStoreDataset)"
        )
    return data


def real_accuracy(
    products: Sequence[RealProduct], dataset_dir: Path, *, session: MaskPredictor
) -> RealReport:
    """Score the captions of real photos (``RealProduct.path`` is relative to ``dataset_dir``)."""
    report = RealReport(len(products), 0.0, 0.0, 0.0)
    colour_hits = packaging_hits = 0
    spent = 0.0
    for start in range(0, len(products), 8):
        batch = products[start : start + 8]
        # As ingest decodes them (an Adobe RGB catalogue photo in sRGB), so the figures are production's.
        images = [decode_image(_labelled_photo(dataset_dir, product)) for product in batch]
        started = time.perf_counter()
        masks = [result.mask for result in session.predict(images)]
        for product, image, mask in zip(batch, images, masks, strict=True):
            sku = SkuMetadata(sku_id="real", name=product.class_name, category=REAL_CATEGORY)
            shape, colour = caption_shape_and_colour(image, mask, sku)
            if colour in product.colours:
                colour_hits += 1
            else:
                report.colour_misses.append(
                    {"path": product.path, "truth": list(product.colours), "got": colour}
                )
            if shape in PACKAGING_SHAPES[product.packaging]:
                packaging_hits += 1
            else:
                report.packaging_misses.append(
                    {"path": product.path, "truth": product.packaging, "got": shape}
                )
        spent += time.perf_counter() - started
    report.colour_accuracy = round(colour_hits / max(len(products), 1), 4)
    report.packaging_accuracy = round(packaging_hits / max(len(products), 1), 4)
    report.seconds_per_photo = round(spent / max(len(products), 1), 4)
    return report
