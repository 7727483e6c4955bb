"""Packaging geometry and shading, evaluated per (super)sample so the mask is exactly what is drawn.

Each shape maps local coordinates (X to the right, Y down, in output pixels before the in-plane
rotation) to "inside the product?" and a lit RGB colour. ``render_layer`` samples that on a
``ss`` x ``ss`` grid per output pixel and box-filters it into a premultiplied RGBA layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

import numpy as np
from PIL import Image

from .label import FRONT, SIDE, WRAP, label_texture
from .palette import RGB
from .products import ProductSpec

F32 = np.float32


@dataclass(frozen=True)
class View:
    """How one photo sees one product: size, pose, camera elevation and light."""

    height: float  # silhouette height in output pixels
    angle: float = 0.0  # in-plane rotation, radians
    stretch: float = 1.0  # horizontal scale: lens and aspect variation
    yaw: float = 0.0  # turn about the vertical axis, radians (cylinders: where the label faces)
    elevation: float = 0.15  # camera elevation, radians; circles show as ellipses of ratio sin(elevation)
    light_az: float = 0.3  # light azimuth, radians, positive = from the right
    light_el: float = 0.75  # light elevation, radians
    ambient: float = 0.5
    gloss: float = 1.0  # specular strength multiplier
    mirror: bool = False  # boxes: show the left side face instead of the right
    wrinkle_seed: int = 0  # pouches: where the creases fall

    def __post_init__(self) -> None:
        # Each shape failed its own way on these (NaN geometry, an empty gather, a few stray pixels).
        for name in (
            "height",
            "angle",
            "stretch",
            "yaw",
            "elevation",
            "light_az",
            "light_el",
            "ambient",
            "gloss",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"View.{name} must be a finite number, got {getattr(self, name)}")
        if self.height <= 0:
            raise ValueError(f"View.height must be a positive number of pixels, got {self.height}")


class Layer(NamedTuple):
    """A rendered product: premultiplied RGB and coverage of the frame region at (x0, y0)."""

    x0: int
    y0: int
    premul: np.ndarray  # (3, h, w) float32 planar RGB times coverage, 0..1
    alpha: np.ndarray  # (h, w) float32 coverage, 0..1


class Shape(Protocol):
    """What ``render_layer`` needs from a packaging shape."""

    extent: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax in local coordinates
    base_half_width: float  # half the footprint width, for the contact shadow

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether each local point is on the product (bool, same shape as ``x``)."""
        ...

    def colour(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lit planar RGB (float32, (3, n), 0..1) at 1-D arrays of local points on or next to the product."""
        ...


def _rgb(c: RGB) -> np.ndarray:
    """A colour as a (3, 1) column, ready to broadcast against planar (3, n) arrays."""
    return (np.asarray(c, dtype=F32) / 255.0)[:, None]


# "Wrap" diffuse lighting: light reaches a little past the terminator, as under the large soft
# boxes of a packshot studio, so the side away from the light darkens gently rather than to black.
_WRAP = 0.35


class _Light:
    """Lambert + Blinn-Phong in camera space (x right, y up, z towards the camera)."""

    def __init__(self, view: View) -> None:
        ce = math.cos(view.light_el)
        self.l = np.array(
            [math.sin(view.light_az) * ce, math.sin(view.light_el), math.cos(view.light_az) * ce], dtype=F32
        )
        h = self.l + np.array([0.0, 0.0, 1.0], dtype=F32)
        self.h = h / np.linalg.norm(h)
        self.ambient = view.ambient
        # A vertical surface facing the light comes out at full brightness (~1.02).
        self.kd = (1.02 - view.ambient) / ((math.cos(view.light_el) + _WRAP) / (1.0 + _WRAP))
        self.gloss = view.gloss

    def apply(
        self,
        albedo: np.ndarray,
        n: tuple[np.ndarray, np.ndarray, np.ndarray],
        ks: float | np.ndarray,
        shininess: float,
    ) -> np.ndarray:
        """Planar RGB of ``albedo`` (3, n) lit at unit normals ``n``; ``ks`` scales the highlight."""
        nx, ny, nz = n
        ndl = np.clip(
            (nx * self.l[0] + ny * self.l[1] + nz * self.l[2] + _WRAP) * (1.0 / (1.0 + _WRAP)), 0.0, None
        )
        ndh = np.clip(nx * self.h[0] + ny * self.h[1] + nz * self.h[2], 0.0, None)
        lit = albedo * (self.ambient + self.kd * ndl)
        spec = np.asarray(ks, dtype=F32) * self.gloss * ndh**shininess
        # Screen blend: highlights whiten dark surfaces without clipping bright ones.
        out: np.ndarray = np.clip(lit + spec * (1.0 - lit), 0.0, 1.0)
        return out


class Texture:
    """A label texture packed one RGBX texel per uint32, so a bilinear tap is a 4-byte gather."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.h, self.w = rgb.shape[1:]
        q = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint32)
        self.packed = (q[0] | (q[1] << 8) | (q[2] << 16)).reshape(-1)

    def sample(self, s: np.ndarray, t: np.ndarray, wrap: bool) -> np.ndarray:
        """Bilinear lookup at texture coordinates s (across) and t (down), both 0..1; (3, n) in 0..1.

        With ``wrap`` s is taken modulo 1 (a label round a cylinder); the seam texel is clamped,
        which only shows on the back of the can.
        """
        h, w = self.h, self.w
        if wrap:
            s = s - np.floor(s)
        fx = s.astype(F32) * w - 0.5
        fy = t.astype(F32) * h - 0.5
        x0 = np.floor(fx)
        y0 = np.floor(fy)
        ax = fx - x0
        ay = fy - y0
        xi = x0.astype(np.int32)
        yi = y0.astype(np.int32)
        np.clip(xi, 0, w - 2, out=xi)
        np.clip(yi, 0, h - 2, out=yi)
        i00 = yi * w + xi
        bx, by = 1.0 - ax, 1.0 - ay
        out = np.zeros((3, s.shape[0]), dtype=F32)
        for index, weight in ((i00, bx * by), (i00 + 1, ax * by), (i00 + w, bx * ay), (i00 + w + 1, ax * ay)):
            texel = np.take(self.packed, index).view(np.uint8).reshape(-1, 4)
            for k in range(3):
                out[k] += texel[:, k] * weight
        out *= 1.0 / 255.0
        return out


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - a) / (b - a), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


# Part ids of bodies of revolution.
_LABEL, _BODY, _CAP, _METAL, _GLASS, _HEADSPACE = range(6)


class Revolve:
    """Cans, bottles and jars: a radius profile r(h) turned about a vertical axis.

    A horizontal circle at height h appears as an ellipse of ratio ``sin(elevation)``, so the
    front of the surface point at height h and angle θ lands at y = h + t·r·cos θ.
    """

    def __init__(self, spec: ProductSpec, view: View) -> None:
        self.spec, self.view = spec, view
        self.light = _Light(view)
        rng = np.random.default_rng([spec.style_seed, 11])
        hk, rk, parts, self.label_span = _profile(spec.shape, rng)
        self.t = t = max(math.sin(view.elevation), 1e-3)  # a level camera still sees a sliver of top
        body_h = view.height / (1.0 + t * spec.aspect / 2.0 * (rk[0] + rk[-1]))
        radius = spec.aspect * body_h / 2.0
        self.body_h, self.radius = body_h, radius
        self.hk = hk * body_h
        self.rk = rk * radius
        slope = np.gradient(self.rk, self.hk)
        # Radius and slope tabulated every quarter pixel of height: a gather is several times
        # cheaper than np.interp's search, and the profile is smooth at that scale.
        self.lut_h0 = float(-t * self.rk[0]) - 2.0
        heights = self.lut_h0 + np.arange(math.ceil((body_h + radius + 4.0 - self.lut_h0) * 4)) / 4.0
        self.r_lut = np.interp(heights, self.hk, self.rk).astype(F32)
        self.slope_lut = np.interp(heights, self.hk, slope).astype(F32)
        self.parts = [(a * body_h, b * body_h, pid) for a, b, pid in parts]
        self.extent = (-radius, radius, -t * self.rk[0], body_h + t * self.rk[-1])
        self.base_half_width = float(self.rk[-1])
        self.ridges = int(rng.integers(40, 80))

    @cached_property
    def tex(self) -> Texture:
        """The wrap-around label, one texel per output pixel at the can's front."""
        l0, l1 = self.label_span
        w, h = math.ceil(2 * math.pi * self.radius), math.ceil((l1 - l0) * self.body_h)
        return Texture(label_texture(self.spec, w, h, WRAP))

    def _lookup(self, table: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Linear interpolation in a quarter-pixel table (clamped at both ends)."""
        f = np.clip((h - self.lut_h0) * 4.0, 0.0, table.shape[0] - 1.001)
        index = f.astype(np.int32)
        lo = np.take(table, index)
        out: np.ndarray = lo + (np.take(table, index + 1) - lo) * (f - index)
        return out

    def _surface(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Surface height h and radius r under each point; whether it hits the side or the top."""
        t = self.t
        r = self._lookup(self.r_lut, y)
        h = y
        for _ in range(2):  # fixed-point solve of y = h + t·r(h)·cos θ; converges in two steps
            c = np.sqrt(np.clip(1.0 - (x / r) ** 2, 0.0, 1.0))
            h = y - t * r * c
            r = self._lookup(self.r_lut, h)
        side = (np.abs(x) <= r) & (h >= 0.0) & (h <= self.body_h)
        rt = float(self.rk[0])
        top = ((x / rt) ** 2 + (y / (t * rt)) ** 2 <= 1.0) & ~side
        return h, r, side, top

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """See ``Shape.inside``."""
        _, _, side, top = self._surface(x, y)
        out: np.ndarray = side | top
        return out

    def colour(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """See ``Shape.colour``."""
        h, r, _, top = self._surface(x, y)
        h = np.clip(h, 0.0, self.body_h)
        u = np.clip(x / r, -1.0, 1.0)
        c = np.sqrt(1.0 - u * u)
        theta = np.arcsin(u)
        slope = self._lookup(self.slope_lut, h)
        nh = 1.0 / np.sqrt(1.0 + slope * slope)
        normal = (u * nh, slope * nh, c * nh)

        part = np.full(x.shape, _BODY, dtype=np.int8)
        for a, b, pid in self.parts:
            part[(h >= a) & (h < b)] = pid
        spec = self.spec
        albedo = np.empty((3, *x.shape), dtype=F32)
        albedo[:] = _rgb(spec.main_rgb)
        ks = np.full(x.shape, 0.35, dtype=F32)

        l0, l1 = self.label_span
        is_label = part == _LABEL
        if is_label.any():
            s_tex = (theta[is_label] + self.view.yaw) / (2 * math.pi) + 0.5
            t_tex = (h[is_label] / self.body_h - l0) / (l1 - l0)
            albedo[:, is_label] = self.tex.sample(s_tex, t_tex, wrap=True)
            ks[is_label] = 0.45 if spec.shape == "can" else 0.3
        cap = part == _CAP
        if cap.any():
            knurl = 0.88 + 0.12 * np.cos(theta[cap] * self.ridges)
            albedo[:, cap] = _rgb(spec.cap_rgb) * knurl
            ks[cap] = 0.45
        metal = part == _METAL
        if metal.any():
            env = 0.78 + 0.22 * np.cos(2.5 * theta[metal] + 0.6)
            ring = h[metal] / (0.03 * self.body_h)
            groove = 1.0 - 0.35 * np.exp(-((((ring - np.floor(ring)) * 7.5) - 1.0) ** 2))
            albedo[:, metal] = _rgb(spec.cap_rgb) * (env * groove)
            ks[metal] = 0.9
        glass = part == _GLASS
        if glass.any():
            edge = _smoothstep(0.8, 1.0, np.abs(u[glass]))
            contents = _rgb(spec.main_rgb) * 0.95
            albedo[:, glass] = contents * (1 - 0.5 * edge) + 0.55 * edge
            ks[glass] = 0.9
        head = part == _HEADSPACE
        if head.any():
            albedo[:, head] = np.array([[0.80], [0.83], [0.84]], dtype=F32) * (0.8 + 0.2 * c[head])
            ks[head] = 0.9
        # The bottom edge sits in the contact shadow.
        albedo *= 1.0 - 0.25 * _smoothstep(self.body_h * 0.96, self.body_h, h)
        rgb = self.light.apply(albedo, normal, ks, 28.0)
        if top.any():
            rt = float(self.rk[0])
            tx, ty = x[top] / rt, y[top] / (self.t * rt)
            rgb[:, top] = self._top_face(tx, ty, np.sqrt(tx * tx + ty * ty))
        return rgb

    def _top_face(self, tx: np.ndarray, ty: np.ndarray, rho: np.ndarray) -> np.ndarray:
        spec = self.spec
        base = _rgb(spec.cap_rgb)
        tone = np.ones_like(rho)
        if spec.shape == "can":
            tone = np.where(rho > 0.9, 1.08, np.where(rho > 0.8, 0.62, 0.86)).astype(F32)
            tab = (np.abs(tx) < 0.15) & (ty > -0.55) & (ty < 0.2)
            hole = (np.abs(tx) < 0.08) & (ty > -0.42) & (ty < -0.18)
            tone = np.where(hole, 0.45, np.where(tab, 1.0, tone)).astype(F32)
        elif spec.shape == "jar":
            tone = np.where((rho > 0.8) & (rho < 0.87), 0.75, np.where(rho < 0.3, 1.06, 1.0)).astype(F32)
        else:
            tone = np.where(rho > 0.88, 0.88, 1.04).astype(F32)
        # Faces the sky: lit by the light's elevation, and a little brighter towards the light.
        gain = (
            self.light.ambient + self.light.kd * (math.sin(self.view.light_el) + _WRAP) / (1.0 + _WRAP) * 1.05
        )
        sheen = 1.0 + 0.08 * tx * math.sin(self.view.light_az)
        out: np.ndarray = np.clip(base * (tone * gain * sheen), 0.0, 1.0)
        return out


def _profile(
    shape: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float, int]], tuple[float, float]]:
    """Radius knots (h, r as fractions of body height/radius), parts by h, and the label span."""
    if shape == "can":
        hk = [0.0, 0.03, 0.075, 0.10, 0.93, 0.965, 1.0]
        rk = [0.86, 0.87, 0.97, 1.0, 1.0, 0.95, 0.88]
        parts = [(0.0, 0.07, _METAL), (0.07, 0.965, _LABEL), (0.965, 1.01, _METAL)]
        return np.array(hk, F32), np.array(rk, F32), parts, (0.07, 0.965)
    if shape == "bottle":
        cap_h = float(rng.uniform(0.08, 0.12))
        neck_r = float(rng.uniform(0.22, 0.32))
        cap_r = neck_r + float(rng.uniform(0.05, 0.1))
        neck_end = cap_h + float(rng.uniform(0.03, 0.07))
        shoulder_end = neck_end + float(rng.uniform(0.14, 0.24))
        s = np.linspace(0.0, 1.0, 14, dtype=F32)
        shoulder_r = neck_r + (1.0 - neck_r) * np.sin(s * np.pi / 2) ** 1.6
        hk_list = [0.0, cap_h - 0.003, cap_h + 0.003]
        rk_list = [cap_r, cap_r, neck_r]
        hk_arr = np.concatenate([hk_list, neck_end + s * (shoulder_end - neck_end), [0.965, 1.0]])
        rk_arr = np.concatenate([rk_list, shoulder_r, [1.0, 0.9]])
        label = (shoulder_end + 0.04, 0.92)
        parts = [(0.0, cap_h, _CAP), (label[0], label[1], _LABEL)]
        return hk_arr.astype(F32), rk_arr.astype(F32), parts, label
    # jar
    lid_h = float(rng.uniform(0.1, 0.15))
    hk = [0.0, lid_h - 0.004, lid_h + 0.004, lid_h + 0.05, lid_h + 0.1, lid_h + 0.13, 0.95, 1.0]
    rk = [0.93, 0.93, 0.86, 0.86, 0.97, 1.0, 1.0, 0.93]
    label = (lid_h + 0.1, 0.93)
    parts = [
        (0.0, lid_h, _CAP),
        (lid_h, lid_h + 0.04, _HEADSPACE),
        (lid_h + 0.04, 1.01, _GLASS),
        (label[0], label[1], _LABEL),
    ]
    return np.array(hk, F32), np.array(rk, F32), parts, label


class Box:
    """A carton: front, one side and the top, projected orthographically from slightly above."""

    def __init__(self, spec: ProductSpec, view: View) -> None:
        self.spec, self.view = spec, view
        self.light = _Light(view)
        w, h, d = spec.aspect, 1.0, spec.depth * spec.aspect
        a = abs(view.yaw) if view.mirror else -abs(view.yaw)
        e = view.elevation
        ca, sa, ce, se = math.cos(a), math.sin(a), math.cos(e), math.sin(e)

        def cam(v: tuple[float, float, float]) -> np.ndarray:
            x, y, z = v
            xr, zr = x * ca + z * sa, -x * sa + z * ca
            return np.array([xr, y * ce - zr * se, y * se + zr * ce], dtype=np.float64)

        def screen(v: tuple[float, float, float]) -> np.ndarray:
            p = cam(v)
            return np.array([p[0], -p[1]])

        side_x = -w / 2 if view.mirror else w / 2
        faces_3d = {
            "front": ((-w / 2, h, d / 2), (w, 0.0, 0.0), (0.0, -h, 0.0), (0.0, 0.0, 1.0)),
            "side": (
                (side_x, h, -d / 2 if view.mirror else d / 2),
                (0.0, 0.0, d if view.mirror else -d),
                (0.0, -h, 0.0),
                (-1.0 if view.mirror else 1.0, 0.0, 0.0),
            ),
            "top": ((-w / 2, h, -d / 2), (w, 0.0, 0.0), (0.0, 0.0, d), (0.0, 1.0, 0.0)),
        }
        corners = [
            screen((sx * w / 2, sy, sz * d / 2)) for sx in (-1, 1) for sy in (0.0, h) for sz in (-1, 1)
        ]
        pts = np.array(corners)
        scale = view.height / float(pts[:, 1].max() - pts[:, 1].min())
        # Faces that show: a face seen edge-on (the side, square on; the top, from level) has no
        # inverse and covers nothing. Normals of all three: the face gains compare them.
        self.faces: dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float], float, float]] = {}
        self.normals: dict[str, tuple[float, float, float]] = {}
        for name, (o, u, v, n) in faces_3d.items():
            o2 = screen(o) * scale
            u2 = (screen((o[0] + u[0], o[1] + u[1], o[2] + u[2])) * scale) - o2
            v2 = (screen((o[0] + v[0], o[1] + v[1], o[2] + v[2])) * scale) - o2
            nc = cam(n)
            normal = (float(nc[0]), float(nc[1]), float(nc[2]))
            self.normals[name] = normal
            try:
                inv = np.linalg.inv(np.array([[u2[0], v2[0]], [u2[1], v2[1]]]))
            except np.linalg.LinAlgError:
                continue
            self.faces[name] = (o2, inv, normal, float(np.hypot(*u2)), float(np.hypot(*v2)))
        px = pts * scale
        self.extent = (
            float(px[:, 0].min()),
            float(px[:, 0].max()),
            float(px[:, 1].min()),
            float(px[:, 1].max()),
        )
        self.base_half_width = (self.extent[1] - self.extent[0]) / 2
        rng = np.random.default_rng([spec.style_seed, 13])
        self.glare = (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.15, 0.5)))

    @cached_property
    def front_tex(self) -> Texture:
        """The front face's print."""
        _, _, _, fw, fh = self.faces["front"]
        return Texture(label_texture(self.spec, math.ceil(fw), math.ceil(fh), FRONT))

    @cached_property
    def side_tex(self) -> Texture:
        """The side face's print: pattern and the brand on its side."""
        _, _, _, sw, sh = self.faces["side"]
        return Texture(label_texture(self.spec, max(8, math.ceil(sw)), math.ceil(sh), SIDE))

    def _st(self, name: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o, inv, _, _, _ = self.faces[name]
        dx, dy = x - o[0], y - o[1]
        s = (inv[0, 0] * dx + inv[0, 1] * dy).astype(F32)
        t = (inv[1, 0] * dx + inv[1, 1] * dy).astype(F32)
        return s, t

    def _lambert(self, name: str) -> float:
        n = self.normals[name]
        ndl = max(0.0, (float(np.dot(n, self.light.l)) + _WRAP) / (1.0 + _WRAP))
        return self.light.ambient + self.light.kd * ndl

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """See ``Shape.inside``."""
        out = np.zeros(x.shape, dtype=bool)
        for name in self.faces:
            s, t = self._st(name, x, y)
            out |= (s >= 0) & (s <= 1) & (t >= 0) & (t <= 1)
        return out

    def colour(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """See ``Shape.colour``."""
        # Packshots light the front; the side face always reads as a second, darker face.
        front_gain = max(self._lambert("front"), 0.9)
        side_gain = max(0.45, min(self._lambert("side"), front_gain * 0.78))
        top_gain = min(1.12, max(self._lambert("top"), front_gain * 1.04))
        main = _rgb(self.spec.main_rgb)
        # Points just outside every face (edge pixels) take the nearest face's colour.
        dist = []
        coords = {}
        for name in self.faces:
            s, t = self._st(name, x, y)
            coords[name] = (s, t)
            dist.append(np.maximum(np.maximum(-s, s - 1), np.maximum(-t, t - 1)))
        which = np.argmin(np.stack(dist), axis=0)
        rgb = np.zeros((3, *x.shape), dtype=F32)
        for k, name in enumerate(self.faces):
            m = which == k
            if not m.any():
                continue
            sm, tm = (np.clip(v[m], 0.0, 1.0) for v in coords[name])
            if name == "front":
                alb = self.front_tex.sample(sm, tm, wrap=False)
                gx, gy = self.glare
                glare = 0.12 * self.view.gloss * np.exp(-((sm - gx) ** 2 + (tm - gy) ** 2) / 0.05)
                edge = _smoothstep(0.97, 1.0, np.maximum(sm, 1 - sm))
                col = alb * (front_gain * (1.0 - 0.08 * tm) * (1.0 - 0.12 * edge))
                col = col + glare * (1.0 - col)
            elif name == "side":
                alb = self.side_tex.sample(sm, tm, wrap=False)
                col = alb * (side_gain * (1.0 - 0.1 * tm))
            else:
                seam = 1.0 - 0.25 * np.exp(-(((tm - 0.5) / 0.02) ** 2))
                col = main * (top_gain * seam)
            rgb[:, m] = np.clip(col, 0.0, 1.0)
        return rgb


class Pouch:
    """A stand-up pouch: crimped top seal, tear notches, pillowed body with soft wrinkles."""

    def __init__(self, spec: ProductSpec, view: View) -> None:
        self.spec, self.view = spec, view
        self.light = _Light(view)
        self.h = h = view.height
        self.w = w = spec.aspect * h
        self.seal = 0.1 * h
        self.wk = np.array([0.0, self.seal, 0.5 * h, 0.9 * h, h], dtype=F32)
        self.wv = np.array([1.0, 1.0, 1.035, 1.05, 1.03], dtype=F32) * (w / 2)
        self.extent = (-1.05 * w / 2, 1.05 * w / 2, 0.0, h)
        self.base_half_width = 0.5 * w
        rng = np.random.default_rng([view.wrinkle_seed, 17])
        k = 5
        self.waves = [
            (
                float(rng.uniform(0, math.pi)),  # direction
                float(rng.uniform(0.12, 0.35)) * w,  # wavelength
                float(rng.uniform(0.006, 0.016)) * w,  # amplitude
                float(rng.uniform(0, 2 * math.pi)),  # phase
                float(rng.uniform(-0.4, 0.4)) * w,  # patch centre x
                float(rng.uniform(0.15, 0.9)) * h,  # patch centre y
                float(rng.uniform(0.15, 0.35)) * w,  # patch radius
            )
            for _ in range(k)
        ]

    @cached_property
    def tex(self) -> Texture:
        """The front print below the seal."""
        return Texture(label_texture(self.spec, math.ceil(self.w), math.ceil(self.h - self.seal), FRONT))

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """See ``Shape.inside``."""
        h = self.h
        half = np.interp(y, self.wk, self.wv).astype(F32)
        bx = x / half
        inside = (np.abs(bx) <= 1.0) & (y >= 0.0) & (y <= h - 0.04 * h * np.abs(bx) ** 10)
        notch_y, notch_h, notch_d = 0.085 * h, 0.012 * h, 0.03 * self.w
        notch = (np.abs(y - notch_y) < notch_h) & (
            np.abs(x) > half - notch_d * (1.0 - np.abs(y - notch_y) / notch_h)
        )
        out: np.ndarray = inside & ~notch
        return out

    def colour(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """See ``Shape.colour``."""
        h, seal = self.h, self.seal
        half = np.interp(y, self.wk, self.wv).astype(F32)
        bx = np.clip(x / half, -1.0, 1.0)
        body_h = h - seal
        yn = np.clip((y - seal) / body_h, 0.0, 1.0)
        amp = 0.12 * self.w
        g = np.clip(np.sin(np.pi * yn), 0.0, None) ** 0.8
        dzdx = amp * (-2.0 * bx / half) * g
        dzdy = amp * (1.0 - bx * bx) * np.pi * np.cos(np.pi * yn) / body_h * 0.8 / np.maximum(g, 0.15) ** 0.25
        for direction, wavelength, a, phase, cx, cy, radius in self.waves:
            k = 2 * math.pi / wavelength
            env = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius * radius))
            arg = k * (x * math.cos(direction) + y * math.sin(direction)) + phase
            dz = a * k * np.cos(arg) * env
            dzdx = dzdx + dz * math.cos(direction)
            dzdy = dzdy + dz * math.sin(direction)
        flat = y < seal
        dzdx = np.where(flat, 0.0, dzdx)
        dzdy = np.where(flat, 0.0, dzdy)
        norm = np.sqrt(dzdx * dzdx + dzdy * dzdy + 1.0)
        normal = (-dzdx / norm, dzdy / norm, 1.0 / norm)

        s_tex = bx * 0.5 + 0.5
        albedo = self.tex.sample(s_tex, yn, wrap=False)
        if flat.any():
            crimp = 0.86 + 0.14 * (np.sin(x[flat] * (2 * math.pi / max(1.5, 0.012 * self.w))) > 0)
            albedo[:, flat] = _rgb(self.spec.main_rgb) * (0.92 * crimp)
        zip_line = 1.0 - 0.3 * np.exp(-(((y - seal - 0.04 * h) / (0.004 * h)) ** 2))
        gusset = 1.0 - 0.2 * np.exp(-(((y - (h - 0.07 * h * (1.0 - 0.6 * bx * bx))) / (0.005 * h)) ** 2))
        albedo *= zip_line * gusset
        return self.light.apply(albedo, normal, 0.4, 22.0)


def build_shape(spec: ProductSpec, view: View) -> Shape:
    """The geometry of ``spec`` as seen in ``view``."""
    if spec.shape == "box":
        return Box(spec, view)
    if spec.shape == "pouch":
        return Pouch(spec, view)
    if spec.shape in ("can", "bottle", "jar"):
        return Revolve(spec, view)
    raise ValueError(f"unknown shape {spec.shape!r}")


def frame_corners(shape: Shape, anchor: tuple[float, float], angle: float, stretch: float) -> np.ndarray:
    """The four corners of the shape's local extent in frame coordinates, (4, 2)."""
    xmin, xmax, ymin, ymax = shape.extent
    xc = (xmin + xmax) / 2
    local = np.array([[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax]], dtype=np.float64)
    dx = (local[:, 0] - xc) * stretch
    dy = local[:, 1] - ymax
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([anchor[0] + ca * dx - sa * dy, anchor[1] + sa * dx + ca * dy], axis=1)


def render_layer(
    shape: Shape,
    anchor: tuple[float, float],
    angle: float,
    stretch: float,
    frame: tuple[int, int],
    ss: int = 2,
) -> Layer | None:
    """Sample ``shape`` ``ss`` x ``ss`` times per pixel inside ``frame`` (width, height).

    ``anchor`` is where the bottom centre of the shape's extent lands; the shape is rotated by
    ``angle`` about it. Returns None when nothing of the shape falls inside the frame.
    """
    fw, fh = frame
    pts = frame_corners(shape, anchor, angle, stretch)
    x0 = max(0, math.floor(pts[:, 0].min()) - 1)
    x1 = min(fw, math.ceil(pts[:, 0].max()) + 1)
    y0 = max(0, math.floor(pts[:, 1].min()) - 1)
    y1 = min(fh, math.ceil(pts[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = x1 - x0, y1 - y0
    xmin, xmax, _, ymax = shape.extent
    ca, sa = math.cos(angle), math.sin(angle)
    xc = (xmin + xmax) / 2

    def local(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = xs - anchor[0], ys - anchor[1]
        return ((ca * dx + sa * dy) / stretch + xc).astype(F32), (-sa * dx + ca * dy + ymax).astype(F32)

    # Coverage is supersampled only where a pixel or one of its 8 neighbours straddles the outline;
    # colour is shaded once per covered pixel (textures are already filtered). Both keep a
    # 512-px photo well under the time budget.
    px = (x0 + np.arange(w, dtype=F32) + 0.5)[None, :]
    py = (y0 + np.arange(h, dtype=F32) + 0.5)[:, None]
    centre = shape.inside(*local(px, py))
    pad = np.pad(centre, 1, mode="edge")
    edge = np.zeros_like(centre)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                edge |= pad[dy : dy + h, dx : dx + w] != centre
    alpha = centre.astype(F32)
    er, ec = np.nonzero(edge)
    if er.size:
        offsets = (np.arange(ss, dtype=F32) + 0.5) / ss
        oy, ox = (g.ravel() for g in np.meshgrid(offsets, offsets, indexing="ij"))
        sxs = x0 + ec.astype(F32)[:, None] + ox[None, :]
        sys_ = y0 + er.astype(F32)[:, None] + oy[None, :]
        alpha[er, ec] = shape.inside(*local(sxs, sys_)).mean(axis=1, dtype=F32)
    rows, cols = np.nonzero(alpha > 0)
    premul = np.zeros((3, h, w), dtype=F32)
    if rows.size:
        lx, ly = local(x0 + cols.astype(F32) + 0.5, y0 + rows.astype(F32) + 0.5)
        premul[:, rows, cols] = shape.colour(lx, ly) * alpha[rows, cols]
    return Layer(x0, y0, premul, alpha)


def composite_layer(img: np.ndarray, layer: Layer, dim: float = 1.0) -> None:
    """Blend ``layer`` over the CxHxW float image ``img`` in place (premultiplied), dimmed by ``dim``."""
    h, w = layer.alpha.shape
    region = img[:, layer.y0 : layer.y0 + h, layer.x0 : layer.x0 + w]
    region *= 1.0 - layer.alpha
    region += layer.premul * dim


def upscale_layer(layer: Layer, size: int) -> Layer:
    """A layer rendered at half size, scaled to full size (bilinear) and clipped to the frame."""
    h, w = layer.alpha.shape
    x0, y0 = layer.x0 * 2, layer.y0 * 2
    w2, h2 = min(2 * w, size - x0), min(2 * h, size - y0)

    def up(plane: np.ndarray) -> np.ndarray:
        big = Image.fromarray(plane, mode="F").resize((2 * w, 2 * h), Image.Resampling.BILINEAR)
        return np.asarray(big, dtype=F32)[:h2, :w2]

    return Layer(x0, y0, np.stack([up(c) for c in layer.premul]), up(layer.alpha))
