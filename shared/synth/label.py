"""Printed label textures: main colour, a secondary-colour pattern, and the brand/flavour/size text."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .palette import RGB
from .products import ProductSpec

FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont

WRAP = "wrap"  # around a cylinder; the front quarter holds the text
FRONT = "front"  # a flat face (box front, pouch)
SIDE = "side"  # a box side: pattern and the brand turned on its side


@lru_cache(maxsize=128)
def _font(size: int) -> FontT:
    # Pillow's embedded font: the same glyphs on every machine, nothing fetched at run time.
    return ImageFont.load_default(size=max(6, size))


def _frac(x: np.ndarray) -> np.ndarray:
    """x mod 1 for floats; ``np.mod`` is an order of magnitude slower on float arrays."""
    out: np.ndarray = x - np.floor(x)
    return out


def _soft_band(coord: np.ndarray, period: float, duty: float, soften: float = 1.0) -> np.ndarray:
    """Coverage (0..1, anti-aliased) of periodic stripes of width ``duty*period`` along ``coord``."""
    phase = _frac(coord / period)
    from_centre = np.abs(phase - 0.5) * period
    return np.clip((duty * period / 2.0 - from_centre) / soften + 0.5, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Design:
    """The label's pattern geometry, drawn once per SKU from its style seed."""

    n_stripes: int
    stripe_duty: float
    diagonal: bool
    slope: float
    dot_rows: int
    dot_r: float
    band_c: float
    band_half: float
    grad_t0: float
    grad_up: bool
    trims: bool
    brand_y: float
    brand_on_secondary: bool

    @classmethod
    def draw(cls, spec: ProductSpec) -> _Design:
        rng = np.random.default_rng([spec.style_seed, 7])
        band_c = float(rng.uniform(0.36, 0.44))
        return cls(
            n_stripes=int(rng.integers(3, 7)),
            stripe_duty=float(rng.uniform(0.14, 0.22)),
            diagonal=bool(rng.random() < 0.5),
            slope=float(rng.uniform(0.5, 1.2)) * (1 if rng.random() < 0.5 else -1),
            dot_rows=int(rng.integers(4, 7)),
            dot_r=float(rng.uniform(0.17, 0.22)),
            band_c=band_c,
            band_half=float(rng.uniform(0.09, 0.12)),
            grad_t0=float(rng.uniform(0.55, 0.68)),
            grad_up=bool(rng.random() < 0.4),
            trims=bool(rng.random() < 0.6) or spec.pattern == "solid",
            # The band pattern centres the brand on its band.
            brand_y=band_c if spec.pattern == "band" else float(rng.uniform(0.34, 0.42)),
            brand_on_secondary=bool(rng.random() < 0.5),
        )


def _pattern(pattern: str, d: _Design, w: int, h: int, wrap: bool) -> np.ndarray:
    """Weight of the secondary colour at each texel (h, w)."""
    y = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    x = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    weight: np.ndarray = np.zeros((h, w), dtype=np.float32)
    if pattern == "stripes":
        period = h / d.n_stripes
        if d.diagonal:
            if wrap:  # a whole number of periods round the can, so no seam
                period = w / max(1, round(w / period))
            weight = _soft_band(x + d.slope * y, period, d.stripe_duty, float(np.hypot(1.0, d.slope)))
        else:
            weight = np.broadcast_to(_soft_band(y, period, d.stripe_duty), (h, w)).copy()
    elif pattern == "dots":
        pitch = h / d.dot_rows
        if wrap:
            pitch = w / max(1, round(w / pitch))
        row = np.floor(y / pitch)
        xoff = _frac(row / 2) * pitch
        cx = (np.floor((x - xoff) / pitch) + 0.5) * pitch + xoff
        cy = (row + 0.5) * pitch
        weight = np.clip(d.dot_r * pitch - np.hypot(x - cx, y - cy) + 0.5, 0.0, 1.0).astype(np.float32)
    elif pattern == "band":
        band = np.clip(d.band_half * h - np.abs(y - d.band_c * h) + 0.5, 0.0, 1.0)
        weight = np.broadcast_to(band, (h, w)).astype(np.float32)
    elif pattern == "gradient":
        t = y / h
        # Secondary colour fades in over the last (1 - grad_t0) of the label, at the top or bottom.
        g = (1.0 - d.grad_t0 - t) / (1.0 - d.grad_t0) if d.grad_up else (t - d.grad_t0) / (1.0 - d.grad_t0)
        weight = np.broadcast_to(np.clip(g, 0.0, 1.0) ** 1.2 * 0.7, (h, w)).astype(np.float32)
    if d.trims:
        edge = max(1.0, 0.018 * h)
        trim = np.clip(edge - np.minimum(y, h - y) + 0.5, 0.0, 1.0)
        weight = np.maximum(weight, trim)
    return weight


def _luminance(rgb: np.ndarray | RGB) -> float:
    c = np.asarray(rgb, dtype=np.float32)
    return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])


def _text_colour(background: np.ndarray) -> RGB:
    return (22, 22, 24) if _luminance(background) > 140 else (250, 250, 248)


def _text_image(text: str, size: int, bold: bool) -> tuple[np.ndarray, int, int]:
    """Coverage (0..1) of ``text`` centred on the origin, and the offset of its top-left corner."""
    font = _font(size)
    stroke = max(1, size // 16) if bold else 0
    x0, y0, x1, y1 = (int(v) for v in font.getbbox(text, anchor="mm", stroke_width=stroke))
    img = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    ImageDraw.Draw(img).text(
        (-x0, -y0), text, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    return np.asarray(img, dtype=np.float32) / 255.0, x0, y0


def _fit_size(text: str, size: int, max_width: float) -> int:
    width = _font(size).getlength(text)
    if width > max_width:
        size = int(size * max_width / width)
    return max(6, size)


def _blend(tex: np.ndarray, cover: np.ndarray, left: int, top: int, colour: RGB) -> None:
    h, w = tex.shape[1:]
    ch, cw = cover.shape
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(w, left + cw), min(h, top + ch)
    if x1 <= x0 or y1 <= y0:
        return
    a = cover[y0 - top : y1 - top, x0 - left : x1 - left]
    for k in range(3):
        region = tex[k, y0:y1, x0:x1]
        region += (colour[k] / 255.0 - region) * a


def _region_mean(tex: np.ndarray, cx: float, cy: float, half_w: float, half_h: float) -> np.ndarray:
    h, w = tex.shape[1:]
    y0 = min(h - 1, max(0, int(cy - half_h)))
    x0 = min(w - 1, max(0, int(cx - half_w)))
    y1 = max(y0 + 1, min(h, int(cy + half_h) + 1))
    x1 = max(x0 + 1, min(w, int(cx + half_w) + 1))
    return np.asarray(tex[:, y0:y1, x0:x1].mean(axis=(1, 2)) * 255.0)


def label_texture(spec: ProductSpec, width: int, height: int, kind: str = FRONT) -> np.ndarray:
    """The label of ``spec`` as planar float32 RGB (3, height, width) in 0..1, laid out for ``kind``.

    The design depends only on the spec, so every photo of a SKU shows the same label;
    ``width``/``height`` only set the texel density (about one texel per output pixel).
    """
    w, h = max(8, int(width)), max(8, int(height))
    d = _Design.draw(spec)
    weight = _pattern(spec.pattern, d, w, h, wrap=(kind == WRAP))

    if kind == WRAP:
        text_w, brand_h, cx = 0.30 * w, 0.24 * h, w / 2.0
    elif kind == FRONT:
        text_w, brand_h, cx = 0.84 * w, min(0.16 * h, 0.3 * w), w / 2.0
    else:
        text_w, brand_h, cx = 0.0, 0.0, w / 2.0

    if kind != SIDE:
        brand_size = _fit_size(spec.brand, int(brand_h), text_w)
        flav_size = _fit_size(spec.flavour_line, int(brand_size * 0.55), text_w)
        small_size = _fit_size(spec.text, max(7, int(brand_size * 0.4)), text_w)
        by = d.brand_y * h
        fy = by + 0.62 * brand_size + 0.6 * flav_size
        sy = 0.88 * h
        if spec.pattern in ("stripes", "dots"):
            # A plain panel behind the words, as printed labels do, so the text stays legible.
            half_w = min(w / 2.0, text_w / 2.0 + 0.04 * h)
            top, bottom = by - 0.7 * brand_size, fy + 0.7 * flav_size
            yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
            xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
            inside = np.clip(half_w - np.abs(xx - cx) + 0.5, 0, 1) * np.clip(
                (bottom - top) / 2 - np.abs(yy - (top + bottom) / 2) + 0.5, 0, 1
            )
            weight = weight * (1.0 - inside)
    tex = _mix(spec.main_rgb, spec.secondary_rgb, weight)

    if kind == SIDE:
        size = _fit_size(spec.brand, int(0.5 * w), 0.8 * h)
        cover, x0, y0 = _text_image(spec.brand, size, bold=True)
        cover = np.ascontiguousarray(np.rot90(cover))
        ch, cw = cover.shape
        colour = _text_colour(_region_mean(tex, cx, h / 2, cw / 2, ch / 2))
        _blend(tex, cover, int(cx - cw / 2), int(h / 2 - ch / 2), colour)
        return tex

    lines = (
        (spec.brand, brand_size, by, True),
        (spec.flavour_line, flav_size, fy, False),
        (spec.text, small_size, sy, False),
    )
    for text, size, y, bold in lines:
        cover, x0, y0 = _text_image(text, size, bold)
        bg = _region_mean(tex, cx, y, cover.shape[1] / 2, cover.shape[0] / 2)
        colour = _text_colour(bg)
        if bold and d.brand_on_secondary and abs(_luminance(spec.secondary_rgb) - _luminance(bg)) > 90:
            colour = spec.secondary_rgb
        _blend(tex, cover, round(cx + x0), round(y + y0), colour)
    return tex


def _mix(main: RGB, secondary: RGB, weight: np.ndarray) -> np.ndarray:
    out = np.empty((3, *weight.shape), dtype=np.float32)
    for k in range(3):
        a, b = main[k] / 255.0, secondary[k] / 255.0
        np.multiply(weight, b - a, out=out[k])
        out[k] += a
    return out
