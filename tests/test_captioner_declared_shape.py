"""A category that names its packaging decides the caption's packaging; the masks decide otherwise.

A user's Tropicana carton, its catalogue mask torn, was captioned "juice carton by Tropicana ...,
loose fresh produce, no packaging" in every photo: the shape measured on the masks overruled what the
owner had said. A caption that contradicts the category teaches a generator the wrong product.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.common import SkuMetadata
from schemas.events import ReferencePhoto, SkuCaptioned, SkuIngested
from shared.captioning.prompts import SHAPE_PHRASES, declared_shape
from shared.config import load_settings
from shared.store import FileStore
from shared.synth import make_product, render_photo
from tests.support.captioning import caption, context


@pytest.mark.parametrize(
    ("category", "shape"),
    [
        ("juice carton", "box"),
        ("Fruit juice carton", "box"),
        ("bottle of water", "bottle"),
        ("can of beans", "can"),
        ("yoghurt tub", "jar"),
        ("bag of apples", "pouch"),
        ("fruit", "produce"),
        ("vegetables", "produce"),
        ("Fresh fruit", "produce"),
        ("fruit and vegetables", "produce"),
        ("fruit of the season", "produce"),
        # The word says what the product is made of, not that it is loose produce: the masks decide.
        ("fruit juice", None),
        ("vegetable oil", None),
        ("dried fruit snack", None),
        ("fruit yoghurt", None),
        ("sour cream", None),
        ("oat drink", None),
        # Packed or processed: not loose fresh produce (all three were captioned as produce).
        ("canned vegetables", "can"),
        ("tinned fruit", "can"),
        ("bottled vegetables", "bottle"),
        ("frozen vegetables", None),
        ("dried fruit", None),
        # A packaging word before a tool or accessory says what it is for, not what it comes in: a can
        # opener was captioned "cylindrical can" and its mask's dents filled as a can's.
        ("can opener", None),
        ("Bottle opener", None),
        ("bottle brush", None),
        ("jar lids", None),
        ("bag clips", None),
        ("box cutter", None),
        ("tin foil", None),
        ("soda can 330ml", "can"),
        # No Latin word to read (a ValueError ended the handler): the masks decide.
        ("飲料", None),
        ("330", None),
        ("", None),
    ],
)
def test_the_packaging_a_category_names(category: str, shape: str | None) -> None:
    assert declared_shape(category) == shape


def _captioned(tmp_path: Path, category: str) -> SkuCaptioned:
    store = FileStore(tmp_path / category.replace(" ", "-"))
    spec = make_product(0, 2026)
    photos = [
        ReferencePhoto(
            photo_id=f"p{index}",
            image=store.put_image(
                f"incoming/SKU-1/p{index}.png", render_photo(spec, index, 2026, size_px=192).image
            ),
            original_filename=f"p{index}.png",
        )
        for index in range(2)
    ]
    sku = SkuMetadata(**{**spec.metadata(), "sku_id": "SKU-1", "category": category})
    return caption(
        SkuIngested(sku=sku, photos=photos), context(store, load_settings(store_uri=store.base_uri))
    )


def test_the_owners_packaging_beats_the_measured_one(tmp_path: Path) -> None:
    measured = _captioned(tmp_path, "sour cream")  # names no packaging: the masks decide
    measured_shape = measured.photos[0].shape
    other = next(shape for shape in ("box", "bottle") if shape != measured_shape)
    category = {"box": "juice carton", "bottle": "bottle of water"}[other]

    declared = _captioned(tmp_path, category)

    for photo in declared.photos:
        assert photo.shape == other
        assert SHAPE_PHRASES[other] in photo.caption
        if SHAPE_PHRASES.get(measured_shape):
            assert SHAPE_PHRASES[measured_shape] not in photo.caption


def test_a_tool_named_after_packaging_is_not_captioned_as_that_packaging(tmp_path: Path) -> None:
    measured = _captioned(tmp_path, "sour cream")  # names no packaging: the masks decide
    measured_shape = measured.photos[0].shape
    named = next(shape for shape in ("can", "bottle") if shape != measured_shape)
    category = {"can": "can opener", "bottle": "bottle opener"}[named]

    tool = _captioned(tmp_path, category)

    for photo, reference in zip(tool.photos, measured.photos, strict=True):
        assert photo.shape == measured_shape, photo.caption
        assert SHAPE_PHRASES[named] not in photo.caption
        assert photo.mask is not None and reference.mask is not None
        assert photo.mask.sha256 == reference.mask.sha256  # no dents filled as on a can's convex outline
