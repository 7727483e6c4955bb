"""Deterministic synthetic product photos with exact masks: the project's own test and training data.

A product (``ProductSpec``, from ``make_product``) is a packaging shape (can, bottle, box, pouch,
jar) with a main label colour from a named palette, a secondary colour, a label pattern, printed
brand/flavour/size text and a cap or lid. ``render_photo`` draws it on a backdrop (studio sweep,
table, shelf with other products behind, clutter, gradient, noise) with shading, highlights and
an optional shadow, and returns the exact binary mask of the product's own pixels.

Same arguments, same bytes: all randomness comes from ``numpy.random.default_rng`` seeded by
(seed, sku index, photo index); text uses Pillow's embedded font.
"""

from .backgrounds import BACKGROUNDS
from .palette import COLOUR_NAMES, PALETTE, canonical_rgb, lab_distance, nearest_colour_name
from .photo import (
    RenderedPhoto,
    blank_photo,
    encode_png,
    photo_filename,
    render_dataset,
    render_photo,
    write_sku_folders,
)
from .products import PATTERNS, SHAPES, ProductSpec, make_product, sku_id_for

__all__ = [
    "BACKGROUNDS",
    "COLOUR_NAMES",
    "PALETTE",
    "PATTERNS",
    "SHAPES",
    "ProductSpec",
    "RenderedPhoto",
    "blank_photo",
    "canonical_rgb",
    "encode_png",
    "lab_distance",
    "make_product",
    "nearest_colour_name",
    "photo_filename",
    "render_dataset",
    "render_photo",
    "sku_id_for",
    "write_sku_folders",
]
