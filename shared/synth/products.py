"""What a synthetic product is: shape, colours, label design and the retailer's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from schemas.common import check_safe_id
from shared.arith.colour import srgb_to_lab

from .palette import COLOUR_NAMES, GOLD, PALETTE, RGB, SILVER, lab_distance

SHAPES: tuple[str, ...] = ("can", "bottle", "box", "pouch", "jar")
PATTERNS: tuple[str, ...] = ("solid", "stripes", "dots", "band", "gradient")

# Consecutive SKUs share brand, series, shape and label design and differ in colour/flavour,
# the way a real product line does; series therefore repeat across a small synthetic catalogue.
SERIES_SIZE = 3

CATEGORIES: dict[str, tuple[str, ...]] = {
    "can": ("soda can", "energy drink can", "sparkling water can", "iced tea can"),
    "bottle": ("shampoo bottle", "water bottle", "juice bottle", "sauce bottle"),
    "box": ("cereal box", "tea box", "cracker box", "cookie box"),
    "pouch": ("coffee pouch", "snack pouch", "granola pouch", "pet food pouch"),
    "jar": ("jam jar", "honey jar", "peanut butter jar", "pickle jar"),
}
SIZES: dict[str, tuple[str, ...]] = {
    "can": ("330 ml", "250 ml", "500 ml", "12 fl oz"),
    "bottle": ("500 ml", "750 ml", "1 L", "400 ml"),
    "box": ("375 g", "500 g", "20 bags", "250 g"),
    "pouch": ("250 g", "500 g", "150 g", "1 kg"),
    "jar": ("340 g", "450 g", "250 g", "400 g"),
}
BRANDS: tuple[str, ...] = (
    "Fizzo", "Nordvik", "Sunmere", "Brightleaf", "Kavora", "Lumio", "Pinecrest", "Velora",
    "Tidewell", "Crumbly", "Maple Row", "Zestique", "Hollis", "Bramble", "Quokka", "Oakhaven",
)  # fmt: skip
LINES: tuple[str, ...] = ("Classic", "Zero", "Organic", "Original", "Light", "Premium", "Fresh", "Gold")
FLAVOURS: dict[str, tuple[str, ...]] = {
    "red": ("Cherry", "Strawberry", "Raspberry", "Tomato"),
    "orange": ("Orange", "Mango", "Peach", "Apricot"),
    "yellow": ("Lemon", "Banana", "Pineapple", "Honey"),
    "green": ("Lime", "Apple", "Mint", "Herbal"),
    "blue": ("Blueberry", "Arctic", "Ocean", "Glacier"),
    "purple": ("Grape", "Blackcurrant", "Lavender", "Plum"),
    "pink": ("Rose", "Watermelon", "Guava", "Bubblegum"),
    "brown": ("Cocoa", "Coffee", "Hazelnut", "Caramel"),
    "black": ("Espresso", "Liquorice", "Charcoal", "Midnight"),
    "white": ("Coconut", "Vanilla", "Milk", "Cotton"),
    "grey": ("Sea Salt", "Silver", "Storm", "Pepper"),
}
_WHITE_TEXT: RGB = (250, 250, 248)
_BLACK_TEXT: RGB = (22, 22, 24)


@dataclass(frozen=True)
class ProductSpec:
    """One synthetic SKU: everything needed to draw it from any viewpoint, plus its metadata.

    ``main_colour``/``secondary_colour`` are palette names (see ``palette.PALETTE``);
    ``text`` is the small print line (pack size) drawn under ``brand`` and the flavour line.
    """

    sku_id: str
    sku_index: int
    seed: int
    shape: str
    main_colour: str
    main_rgb: RGB
    secondary_colour: str
    secondary_rgb: RGB
    pattern: str
    brand: str
    name: str
    category: str
    series: str
    text: str
    flavour_line: str
    text_rgb: RGB
    cap_rgb: RGB
    aspect: float  # body width / body height (front face for a box)
    depth: float  # box depth / box width; 0 for other shapes
    style_seed: int  # pattern geometry (stripe count, dot pitch, ...) is drawn from this

    def metadata(self) -> dict[str, str]:
        """The ``metadata.json`` content: exactly the fields of ``schemas.common.SkuMetadata``."""
        return {
            "sku_id": self.sku_id,
            "name": self.name,
            "category": self.category,
            "brand": self.brand,
            "series": self.series,
        }


def sku_id_for(sku_index: int, seed: int) -> str:
    """The id of synthetic SKU ``sku_index`` (0-based) of catalogue ``seed``: ``SYN-<seed>-0001``..."""
    return check_safe_id(f"SYN-{seed}-{sku_index + 1:04d}")


def _contrast_text(rgb: RGB) -> RGB:
    lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return _BLACK_TEXT if lum > 150 else _WHITE_TEXT


@cache
def _secondary_choices(main: str) -> tuple[str, ...]:
    """Colours far enough from ``main`` that stripes and bands read as a second colour."""
    labs = {n: srgb_to_lab(np.array(PALETTE[n][0])) for n in COLOUR_NAMES}
    return tuple(n for n in COLOUR_NAMES if n != main and float(lab_distance(labs[n], labs[main])) > 45.0)


def _pick_secondary(rng: np.random.Generator, main: str) -> str:
    far = _secondary_choices(main)
    return far[int(rng.integers(len(far)))]


def make_product(sku_index: int, seed: int) -> ProductSpec:
    """The deterministic product ``sku_index`` of the synthetic catalogue ``seed`` (both ≥ 0).

    Every block of 15 SKUs holds all five shapes; SKUs come in series of three that share
    brand, line, shape and label design but differ in main colour and flavour.
    """
    if sku_index < 0 or seed < 0:
        raise ValueError("sku_index and seed must be non-negative")
    series_index = sku_index // SERIES_SIZE
    block = np.random.default_rng([seed, series_index // len(SHAPES), 101])
    shape = SHAPES[int(block.permutation(len(SHAPES))[series_index % len(SHAPES)])]

    grp = np.random.default_rng([seed, series_index, 202])
    brand = BRANDS[int(grp.integers(len(BRANDS)))]
    line = LINES[int(grp.integers(len(LINES)))]
    category = CATEGORIES[shape][int(grp.integers(len(CATEGORIES[shape])))]
    pattern = PATTERNS[int(grp.integers(len(PATTERNS)))]
    style_seed = int(grp.integers(2**31))
    colours = grp.permutation(len(COLOUR_NAMES))
    size_text = SIZES[shape][int(grp.integers(len(SIZES[shape])))]
    if shape == "can":
        aspect = float(grp.uniform(0.40, 0.46)) if grp.random() < 0.3 else float(grp.uniform(0.52, 0.62))
    elif shape == "bottle":
        aspect = float(grp.uniform(0.30, 0.40))
    elif shape == "box":
        aspect = float(grp.uniform(0.58, 1.05))
    elif shape == "pouch":
        aspect = float(grp.uniform(0.64, 0.84))
    else:
        aspect = float(grp.uniform(0.72, 1.02))
    depth = float(grp.uniform(0.24, 0.45)) if shape == "box" else 0.0
    cap_kind = int(grp.integers(3))

    sku = np.random.default_rng([seed, sku_index, 303])
    main = COLOUR_NAMES[int(colours[sku_index % SERIES_SIZE])]
    main_rgb = PALETTE[main][int(sku.integers(len(PALETTE[main])))]
    secondary = _pick_secondary(sku, main)
    secondary_rgb = PALETTE[secondary][int(sku.integers(len(PALETTE[secondary])))]
    flavour = FLAVOURS[main][int(sku.integers(len(FLAVOURS[main])))]

    if shape == "can":
        cap_rgb = SILVER
    elif shape == "jar":
        cap_rgb = (GOLD, SILVER, secondary_rgb)[cap_kind]
    elif shape == "bottle":
        cap_rgb = (secondary_rgb, PALETTE["white"][0], PALETTE["black"][1])[cap_kind]
    else:
        cap_rgb = secondary_rgb

    return ProductSpec(
        sku_id=sku_id_for(sku_index, seed),
        sku_index=sku_index,
        seed=seed,
        shape=shape,
        main_colour=main,
        main_rgb=main_rgb,
        secondary_colour=secondary,
        secondary_rgb=secondary_rgb,
        pattern=pattern,
        brand=brand,
        name=f"{brand} {line} {flavour}",
        category=category,
        series=f"{brand} {line}",
        text=size_text,
        flavour_line=f"{line} {flavour}",
        text_rgb=_contrast_text(main_rgb),
        cap_rgb=cap_rgb,
        aspect=aspect,
        depth=depth,
        style_seed=style_seed,
    )
