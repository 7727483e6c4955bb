"""Named colours: the words a captioner may answer with, each a few RGB variants around one value."""

from __future__ import annotations

import numpy as np

from shared.arith.colour import srgb_to_lab

RGB = tuple[int, int, int]

# The first variant is the canonical value; the others keep "red" from being one exact RGB.
PALETTE: dict[str, tuple[RGB, ...]] = {
    "red": ((200, 30, 35), (215, 42, 40), (180, 22, 30), (222, 55, 50)),
    "orange": ((240, 130, 20), (250, 145, 40), (226, 115, 15), (245, 122, 30)),
    "yellow": ((245, 205, 30), (250, 220, 55), (236, 194, 20), (255, 212, 72)),
    "green": ((40, 150, 60), (30, 132, 52), (62, 168, 70), (22, 122, 72)),
    "blue": ((30, 80, 190), (22, 62, 162), (42, 102, 212), (26, 72, 176)),
    "purple": ((120, 50, 160), (102, 40, 140), (140, 62, 176), (112, 50, 150)),
    "pink": ((240, 120, 170), (250, 142, 186), (230, 100, 160), (244, 130, 176)),
    "brown": ((120, 70, 35), (100, 60, 30), (140, 86, 46), (112, 66, 40)),
    "black": ((30, 30, 32), (20, 20, 22), (42, 42, 46), (26, 28, 30)),
    "white": ((240, 240, 236), (248, 248, 245), (234, 234, 229), (245, 244, 240)),
    "grey": ((130, 132, 135), (150, 150, 152), (115, 117, 120), (140, 140, 138)),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)

# Not main-colour names: materials of caps, lids and can ends.
SILVER: RGB = (188, 190, 196)
GOLD: RGB = (196, 158, 64)


def canonical_rgb(name: str) -> RGB:
    """The canonical RGB of a palette colour name; ``KeyError`` names the palette when unknown."""
    try:
        return PALETTE[name][0]
    except KeyError:
        raise KeyError(f"unknown colour {name!r}; known: {', '.join(COLOUR_NAMES)}") from None


def lab_distance(a: np.ndarray, b: np.ndarray, lightness_weight: float = 1.0) -> np.ndarray:
    """Euclidean Lab distance with ΔL divided by ``lightness_weight`` (2.0 ≈ CMC 2:1 acceptability)."""
    d = np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)
    return np.sqrt((d[..., 0] / lightness_weight) ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2)


def nearest_colour_name(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """The palette name whose canonical value is closest in Lab to ``rgb``."""
    names = list(PALETTE)
    centres = srgb_to_lab(np.array([PALETTE[n][0] for n in names]))
    d = lab_distance(centres, srgb_to_lab(np.asarray(rgb))[None, :])
    return names[int(np.argmin(d))]
