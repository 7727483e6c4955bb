"""Backdrops for synthetic photos: studio sweep, wooden table, store shelf, clutter, gradient, noise.

Each builder returns the backdrop as planar float32 RGB (3, size, size) in 0..1, plus where
distractor products may stand (``Stand``) and, for shelves, an overlay (the shelf lips) drawn in
front of those distractors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .palette import PALETTE

F32 = np.float32
BACKGROUNDS: tuple[str, ...] = ("studio", "table", "shelf", "clutter", "gradient", "noise")
# Kinds with a floor the product stands on: they get a cast shadow rather than a drop shadow.
GROUNDED: frozenset[str] = frozenset({"studio", "table", "shelf"})


@dataclass(frozen=True)
class Placement:
    """Where the main product sits, which the backdrop is built around."""

    size: int
    base_y: float  # lowest point of the product
    top_y: float
    left: float
    right: float

    @classmethod
    def around(cls, corners: np.ndarray, size: int) -> Placement:
        """The placement of a product whose frame has these (N, 2) x, y ``corners``."""
        return cls(
            size=size,
            base_y=float(corners[:, 1].max()),
            top_y=float(corners[:, 1].min()),
            left=float(corners[:, 0].min()),
            right=float(corners[:, 0].max()),
        )


@dataclass(frozen=True)
class Stand:
    """A line distractor products stand on: their base y range and a height scale."""

    base_y: float
    spread_y: float  # products stand up to this far behind (above) base_y
    height: float  # typical distractor height in pixels
    count: tuple[int, int]  # inclusive range of how many stand here


@dataclass
class Backdrop:
    """A backdrop, where distractors may stand, and what is drawn in front of them."""

    image: np.ndarray  # planar (3, size, size) float32
    stands: list[Stand] = field(default_factory=list)
    overlay: tuple[np.ndarray, np.ndarray] | None = None  # planar premultiplied RGB, alpha


def planar(image: Image.Image) -> np.ndarray:
    """An RGB PIL image as planar float32 (3, h, w) in 0..1."""
    return np.stack([np.asarray(band, dtype=F32) for band in image.split()]) * (1.0 / 255.0)


def to_image(img: np.ndarray) -> Image.Image:
    """Planar float (3, h, w) in 0..1 to an RGB PIL image (rounded, clipped)."""
    bands = [Image.fromarray(np.clip(c * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L") for c in img]
    return Image.merge("RGB", bands)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=F32) + 0.5) / size
    return c[None, :], c[:, None]


def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise (size, size) in about 0..1 from a ``cells`` x ``cells`` lattice, bicubic."""
    lattice = Image.fromarray(rng.random((cells + 3, cells + 3)).astype(F32), mode="F")
    step = size / cells
    box = (1.0, 1.0, 1.0 + size / step, 1.0 + size / step)
    return np.asarray(lattice.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=F32)


def _fractal(rng: np.random.Generator, size: int, base_cells: int, octaves: int) -> np.ndarray:
    out = np.zeros((size, size), dtype=F32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        out += amp * value_noise(rng, size, base_cells * 2**k)
        total += amp
        amp *= 0.5
    return out / total


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    names = list(PALETTE)
    variants = PALETTE[names[int(rng.integers(len(names)))]]
    return np.asarray(variants[int(rng.integers(len(variants)))], dtype=F32) / 255.0


def _any_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        return _palette_colour(rng)
    return rng.uniform(0.05, 0.95, 3).astype(F32)


def _rgb255(c: np.ndarray) -> tuple[int, int, int]:
    return int(c[0] * 255), int(c[1] * 255), int(c[2] * 255)


def _pastel(rng: np.random.Generator, whiteness: float) -> np.ndarray:
    return (_palette_colour(rng) * (1 - whiteness) + whiteness).astype(F32)


def _tinted(colour: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Planar (3, ...) image: ``colour`` scaled by a scalar ``field`` (a per-channel loop is far
    faster than broadcasting against a trailing axis of 3)."""
    out = np.empty((3, *field.shape), dtype=F32)
    for k in range(3):
        np.multiply(field, colour[k], out=out[k])
    return out


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Planar (3, ...) blend from colour ``a`` (t=0) to colour ``b`` (t=1)."""
    out = np.empty((3, *t.shape), dtype=F32)
    for k in range(3):
        np.multiply(t, b[k] - a[k], out=out[k])
        out[k] += a[k]
    return out


def _vignette(size: int, cx: float, cy: float, strength: float) -> np.ndarray:
    x, y = _grid(size)
    r2 = (x - cx) ** 2 + (y - cy) ** 2
    return (1.0 - strength * r2).astype(F32)


def studio(rng: np.random.Generator, place: Placement) -> Backdrop:
    """A paper sweep: wall fading into floor behind the product, with a soft vignette."""
    s = place.size
    if rng.random() < 0.75:
        base = np.full(3, rng.uniform(0.8, 0.97), dtype=F32) + rng.uniform(-0.02, 0.02, 3).astype(F32)
    else:
        base = _pastel(rng, float(rng.uniform(0.55, 0.8)))
    wall, floor = float(rng.uniform(0.86, 0.98)), float(rng.uniform(0.98, 1.08))
    height = place.base_y - place.top_y
    horizon = (place.base_y - rng.uniform(0.15, 0.6) * height) / s
    soft = float(rng.uniform(0.08, 0.25))
    _, y = _grid(s)
    ramp = np.clip((y - horizon) / soft + 0.5, 0.0, 1.0)
    tone = wall + (floor - wall) * ramp * ramp * (3 - 2 * ramp)
    spot = _vignette(
        s, (place.left + place.right) / 2 / s, float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.15, 0.4))
    )
    return Backdrop(np.clip(_tinted(base, tone * spot), 0.0, 1.0))


_WOODS = (
    ((0.74, 0.56, 0.37), (0.55, 0.38, 0.22)),  # oak
    ((0.45, 0.30, 0.19), (0.30, 0.19, 0.11)),  # walnut
    ((0.84, 0.79, 0.71), (0.70, 0.64, 0.56)),  # white-washed
    ((0.60, 0.57, 0.53), (0.45, 0.42, 0.39)),  # grey
    ((0.80, 0.62, 0.42), (0.66, 0.46, 0.28)),  # pine
)


def _frac(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x - np.floor(x)
    return out


def _wood(
    rng: np.random.Generator, tx: np.ndarray, tz: np.ndarray, light: np.ndarray, dark: np.ndarray
) -> np.ndarray:
    """Plank colour at table coordinates tx (across) and tz (depth), both in plank widths."""
    plank = np.floor(tx)
    along = tx - plank
    tone = 0.9 + 0.2 * _frac(np.sin(plank * 12.9898) * 437.585)
    f1, f2 = float(rng.uniform(5, 9)), float(rng.uniform(0.3, 0.8))
    p1, p2 = float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3))
    warp = 0.35 * np.sin(tz * f2 + plank * 1.7 + p1) + 0.15 * np.sin(tz * (2.3 * f2) + plank + p2)
    grain = np.sin((tx + warp) * (f1 * 2 * math.pi))
    grain = 0.5 + 0.5 * grain * grain * grain
    seam = 1.0 - 0.5 * np.exp(-((along * (1.0 - along) / 0.004) ** 2) * 0.5)
    out: np.ndarray = _lerp(light, dark, grain * 0.6 + 0.2) * (tone * seam)
    return out


def table(rng: np.random.Generator, place: Placement) -> Backdrop:
    """A wooden table top receding to a horizon, a plain wall above it."""
    s = place.size
    height = place.base_y - place.top_y
    horizon = float(np.clip(place.base_y - rng.uniform(0.2, 0.6) * height, 0.04 * s, place.base_y - 0.06 * s))
    light, dark = (np.asarray(c, dtype=F32) for c in _WOODS[int(rng.integers(len(_WOODS)))])
    wall = _pastel(rng, float(rng.uniform(0.5, 0.9))) * float(rng.uniform(0.7, 1.0))
    vx = float(rng.uniform(0.2, 0.8)) * s
    plank_px = float(rng.uniform(0.12, 0.3)) * s
    x = (np.arange(s, dtype=F32) + 0.5)[None, :]
    split = min(s, max(0, math.ceil(horizon - 0.5)))
    img = np.empty((3, s, s), dtype=F32)

    y_wall = (np.arange(split, dtype=F32) + 0.5)[:, None]
    cols = 0.85 + 0.15 * (1.0 - 0.8 * ((x - vx) / s) ** 2)
    rows = 1.0 - 0.25 * np.exp(-(horizon - y_wall) / (0.03 * s))
    img[:, :split] = _tinted(wall, cols * rows)

    y = (np.arange(split, s, dtype=F32) + 0.5)[:, None]
    depth = np.maximum(y - horizon, 0.5)
    # Perspective: across-table distance scales with 1/depth, so planks converge to (vx, horizon).
    tx = (x - vx) / depth * (s * 0.35 / plank_px) + 100.0
    tz = s / depth
    fade = 0.75 + 0.3 * np.clip(depth / (s - horizon + 1), 0, 1)
    img[:, split:] = _wood(rng, tx, np.broadcast_to(tz, tx.shape), light, dark) * fade
    stands = [
        Stand(place.base_y - 0.03 * s, max(1.0, place.base_y - 0.06 * s - horizon), 0.7 * height, (0, 2))
    ]
    return Backdrop(np.clip(img, 0.0, 1.0), stands)


def shelf(rng: np.random.Generator, place: Placement) -> Backdrop:
    """A store shelf: back wall, the plank the product stands on, maybe the plank above."""
    s = place.size
    height = place.base_y - place.top_y
    wall = _pastel(rng, float(rng.uniform(0.3, 0.85))) * float(rng.uniform(0.35, 0.95))
    xs = (np.arange(s, dtype=F32) + 0.5) / s
    panels = 1.0 - 0.06 * (_frac(xs * float(rng.integers(2, 6))) < 0.01)
    img = np.empty((3, s, s), dtype=F32)
    img[:] = (wall[:, None] * (0.8 + 0.2 * panels)[None, :])[:, None, :]

    plank = np.asarray(
        (rng.uniform(0.75, 0.95, 3) if rng.random() < 0.6 else rng.uniform(0.25, 0.5, 3)), dtype=F32
    )
    lip_colour = plank * float(rng.uniform(0.85, 1.05))
    overlay_rgb = np.zeros((3, s, s), dtype=F32)
    overlay_a = np.zeros((s, s), dtype=F32)
    stands: list[Stand] = []
    surface = float(rng.uniform(0.05, 0.1)) * s
    lip_top = place.base_y + float(rng.uniform(0.005, 0.02)) * s
    lip_h = float(rng.uniform(0.04, 0.07)) * s
    px = np.arange(s, dtype=F32) + 0.5

    def rows(a: float, b: float) -> tuple[int, int]:
        return min(s, max(0, round(a))), min(s, max(0, round(b)))

    def draw_plank(base: float, top_of_lip: float) -> None:
        r0, r1 = rows(base - surface, top_of_lip)
        depth_tone = 0.82 + 0.18 * np.clip((np.arange(r0, r1, dtype=F32) - (base - surface)) / surface, 0, 1)
        img[:, r0:r1] = plank[:, None, None] * depth_tone[None, :, None]
        l0, l1 = rows(top_of_lip, top_of_lip + lip_h)
        ramp = 1.0 - 0.3 * np.clip((np.arange(l0, l1, dtype=F32) - top_of_lip) / lip_h, 0, 1)
        lip = np.empty((3, l1 - l0, s), dtype=F32)
        lip[:] = lip_colour[:, None, None] * ramp[None, :, None]
        # Price tags on the lip: white labels with dark "digits".
        t0, t1 = rows(top_of_lip + 0.15 * lip_h - l0, top_of_lip + 0.85 * lip_h - l0)
        d0, d1 = rows(top_of_lip + 0.32 * lip_h - l0, top_of_lip + 0.68 * lip_h - l0)
        for start in rng.uniform(0.0, 1.0, int(rng.integers(1, 4))) * s:
            c0, c1 = rows(start, start + 0.12 * s)
            lip[:, t0:t1, c0:c1] = 0.96
            digit_cols = (
                (px > start + 0.06 * s) & (px < start + 0.12 * s) & (_frac((px - start) / (0.018 * s)) < 0.6)
            )
            lip[:, d0:d1, digit_cols] = 0.15
        overlay_rgb[:, l0:l1] = lip
        overlay_a[l0:l1] = 1.0
        # The plank shades the wall right under it.
        below = np.arange(l1, s, dtype=F32) - l1
        img[:, l1:] *= (1.0 - 0.35 * np.exp(-below / (0.05 * s)))[None, :, None]

    gap = height * float(rng.uniform(1.15, 1.5)) + lip_h
    upper_lip = place.top_y - float(rng.uniform(0.03, 0.1)) * s - lip_h
    upper_base = upper_lip - float(rng.uniform(0.005, 0.02)) * s
    if upper_lip > 0.04 * s and upper_base - surface > 0:
        draw_plank(upper_base, upper_lip)
        stands.append(Stand(upper_base - 0.01 * s, 0.02 * s, min(gap, 1.2 * height), (1, 2)))
    draw_plank(place.base_y, lip_top)
    stands.append(Stand(place.base_y - 0.01 * s, 0.03 * s, 0.85 * height, (1, 3)))
    return Backdrop(np.clip(img, 0.0, 1.0), stands, (overlay_rgb, overlay_a))


def clutter(rng: np.random.Generator, place: Placement) -> Backdrop:
    """Random overlapping shapes in random colours, softly out of focus."""
    s = place.size
    # Drawn at half size: the upscale is the defocus, and blurring a quarter of the pixels is cheap.
    half = max(8, s // 2)
    k = half / s
    img = Image.new("RGB", (half, half), _rgb255(_any_colour(rng)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(15, 40))):
        colour = _rgb255(_any_colour(rng))
        cx, cy = rng.uniform(-0.1, 1.1, 2) * half
        rx, ry = rng.uniform(0.03, 0.3, 2) * half
        kind = int(rng.integers(4))
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        elif kind == 2:
            n = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * math.pi, n))
            draw.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in ang], fill=colour)
        else:
            width = max(1, int(rng.integers(2, 12) * k))
            draw.line([(cx - rx, cy - ry), (cx + rx, cy + ry)], fill=colour, width=width)
    radius = float(rng.uniform(0.0, 1.5))
    if radius > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    img = img.resize((s, s), Image.Resampling.BICUBIC)
    return Backdrop(planar(img))


def gradient(rng: np.random.Generator, place: Placement) -> Backdrop:
    """A linear or radial blend between two colours."""
    s = place.size
    a, b = _any_colour(rng), _any_colour(rng)
    x, y = _grid(s)
    if rng.random() < 0.6:
        ang = float(rng.uniform(0, 2 * math.pi))
        t = (x - 0.5) * math.cos(ang) + (y - 0.5) * math.sin(ang) + 0.5
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) * float(rng.uniform(1.0, 1.8))
    return Backdrop(_lerp(a, b, np.clip(t, 0.0, 1.0)))


def noise(rng: np.random.Generator, place: Placement) -> Backdrop:
    """Fractal noise between two colours: concrete, stone, fabric-like textures."""
    s = place.size
    a, b = _any_colour(rng), _any_colour(rng)
    if rng.random() < 0.5:  # low-contrast textures are the common case for real surfaces
        b = (a * 0.7 + b * 0.3).astype(F32)
    n = _fractal(rng, s, int(rng.integers(3, 9)), 4)
    n = np.clip((n - 0.5) * float(rng.uniform(1.5, 3.0)) + 0.5, 0, 1)
    img = _lerp(a, b, n)
    if rng.random() < 0.3:
        c = (np.arange(s, dtype=F32) + 0.5) / s * float(rng.uniform(80, 200))
        img *= 0.94 + 0.06 * np.sin(c)[:, None] * np.sin(c)[None, :]
    return Backdrop(np.clip(img, 0.0, 1.0))


BUILDERS = {
    "studio": studio,
    "table": table,
    "shelf": shelf,
    "clutter": clutter,
    "gradient": gradient,
    "noise": noise,
}
