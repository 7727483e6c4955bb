"""Synthetic product photos with exact masks, and the SKU folders and truth file built from them."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .backgrounds import BACKGROUNDS, BUILDERS, GROUNDED, Placement, Stand, planar, to_image
from .palette import PALETTE
from .products import ProductSpec, make_product, sku_id_for
from .shapes import Layer, View, build_shape, composite_layer, frame_corners, render_layer, upscale_layer

F32 = np.float32
# Share of the silhouette's bounding box the product fills; turns a target area into a height.
_FILL = {"can": 0.93, "bottle": 0.72, "jar": 0.93, "box": 0.9, "pouch": 0.95}
_BG_WEIGHTS = np.array([0.2, 0.18, 0.2, 0.14, 0.12, 0.16])
MIN_SIZE = 64


@dataclass(frozen=True)
class RenderedPhoto:
    """One synthetic photo, its exact product mask (uint8 HxW, 0 or 255) and what was drawn."""

    image: Image.Image
    mask: np.ndarray
    metadata: dict[str, Any]

    def png(self) -> bytes:
        """The photo as PNG bytes (deterministic: fixed compression, no metadata chunks)."""
        return encode_png(self.image)

    def mask_png(self) -> bytes:
        """The mask as an 8-bit greyscale PNG (0 background, 255 product)."""
        return encode_png(Image.fromarray(self.mask, mode="L"))


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` with a fixed encoder setting and no text/time chunks."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def blank_photo(size_px: int = 512, colour: str | tuple[int, int, int] = "white") -> Image.Image:
    """A uniform RGB image with no product in it: a palette name or an RGB triple (each 0 to 255).

    ``ValueError`` for a side under 1 px, an unknown name or a triple Pillow would clamp or reject.
    """
    if size_px < 1:
        raise ValueError(f"size_px must be at least 1, got {size_px}")
    if isinstance(colour, str):
        if colour not in PALETTE:
            raise ValueError(f"unknown colour {colour!r}; known: {', '.join(PALETTE)}")
        return Image.new("RGB", (size_px, size_px), PALETTE[colour][0])
    # Pillow clamps (300, 0, 0) to (255, 0, 0): a different picture from the one asked for.
    if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
        raise ValueError(f"colour must be a palette name or three values 0 to 255, got {colour!r}")
    return Image.new("RGB", (size_px, size_px), (int(colour[0]), int(colour[1]), int(colour[2])))


def _check_size(size_px: int) -> None:
    if size_px < MIN_SIZE:
        raise ValueError(f"size_px must be at least {MIN_SIZE}")


@dataclass(frozen=True)
class _Pose:
    """Everything random about one photo, drawn up front in a fixed order."""

    kind: str
    elevation: float
    yaw_raw: float
    mirror: bool
    light_az: float
    light_el: float
    ambient: float
    gloss: float
    angle: float
    stretch: float
    area: float
    margin: float
    pos_x: float
    pos_y: float
    wrinkle_seed: int
    shadow_roll: float
    shadow_strength: float
    shadow_squash: float
    shadow_shear: float
    shadow_blur: float
    contact_strength: float
    drop_offset: float
    defocus_roll: float
    defocus: float
    gain: float
    tint: tuple[float, float, float]
    grain: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Pose:
        return cls(
            kind=BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=_BG_WEIGHTS / _BG_WEIGHTS.sum()))],
            elevation=float(rng.uniform(0.05, 0.25)),
            yaw_raw=float(rng.uniform(-1.0, 1.0)),
            mirror=bool(rng.random() < 0.5),
            light_az=float(rng.uniform(-0.75, 0.75)),
            light_el=float(rng.uniform(0.35, 0.8)),
            ambient=float(rng.uniform(0.5, 0.65)),
            gloss=float(rng.uniform(0.5, 1.0)),
            angle=float(np.clip(rng.normal(0.0, 0.045), -0.1, 0.1)),
            stretch=float(rng.uniform(0.94, 1.06)),
            area=float(rng.uniform(0.08, 0.4)),
            margin=float(rng.uniform(0.015, 0.06)),
            pos_x=float(rng.beta(2.0, 2.0)),
            pos_y=float(rng.beta(2.0, 2.0)),
            wrinkle_seed=int(rng.integers(2**31)),
            shadow_roll=float(rng.random()),
            shadow_strength=float(rng.uniform(0.3, 0.6)),
            shadow_squash=float(rng.uniform(0.15, 0.5)),
            shadow_shear=float(rng.uniform(0.5, 1.2)),
            shadow_blur=float(rng.uniform(0.01, 0.035)),
            contact_strength=float(rng.uniform(0.4, 0.7)),
            drop_offset=float(rng.uniform(0.015, 0.045)),
            defocus_roll=float(rng.random()),
            defocus=float(rng.uniform(0.6, 2.0)),
            gain=float(rng.uniform(0.93, 1.05)),
            tint=(
                float(rng.uniform(-0.025, 0.025)),
                float(rng.uniform(-0.025, 0.025)),
                float(rng.uniform(-0.025, 0.025)),
            ),
            grain=float(rng.uniform(0.002, 0.01)),
        )


def _view(spec: ProductSpec, pose: _Pose, height: float, wrinkle_seed: int | None = None) -> View:
    if spec.shape == "box":
        yaw = 0.3 + 0.45 * abs(pose.yaw_raw)
    elif spec.shape == "pouch":
        yaw = 0.0
    else:
        yaw = 0.6 * pose.yaw_raw
    return View(
        height=height,
        angle=pose.angle,
        stretch=pose.stretch,
        yaw=yaw,
        elevation=pose.elevation,
        light_az=pose.light_az,
        light_el=pose.light_el,
        ambient=pose.ambient,
        gloss=pose.gloss,
        mirror=pose.mirror,
        wrinkle_seed=pose.wrinkle_seed if wrinkle_seed is None else wrinkle_seed,
    )


def _place(spec: ProductSpec, pose: _Pose, size: int) -> tuple[View, tuple[float, float], np.ndarray]:
    """Pick the product's height and anchor so its rotated extent lies inside the frame."""
    probe = build_shape(spec, _view(spec, pose, 100.0))
    xmin, xmax, ymin, ymax = probe.extent
    ratio = (xmax - xmin) * pose.stretch / (ymax - ymin)
    height = size * math.sqrt(pose.area / (_FILL[spec.shape] * ratio))
    height = min(max(height, 0.40 * size), 0.85 * size, 0.9 * size / ratio)
    margin = pose.margin * size
    for _ in range(20):
        view = _view(spec, pose, height)
        corners = frame_corners(build_shape(spec, view), (0.0, 0.0), pose.angle, pose.stretch)
        lo_x, hi_x = margin - corners[:, 0].min(), size - margin - corners[:, 0].max()
        lo_y, hi_y = margin - corners[:, 1].min(), size - margin - corners[:, 1].max()
        if lo_x <= hi_x and lo_y <= hi_y:
            break
        height *= 0.93
    # Products on a floor or shelf sit in the lower part of the frame more often than not.
    pos_y = 0.3 + 0.7 * pose.pos_y if pose.kind in GROUNDED else pose.pos_y
    anchor = (lo_x + (hi_x - lo_x) * pose.pos_x, lo_y + (hi_y - lo_y) * pos_y)
    return view, anchor, corners + np.array(anchor)


def _distractors(
    img: np.ndarray, stands: list[Stand], rng: np.random.Generator, pose: _Pose, seed: int, size: int
) -> int:
    """Draw other products standing behind the main one; returns how many were drawn."""
    drawn = 0
    for stand in stands:
        count = int(rng.integers(stand.count[0], stand.count[1] + 1))
        items = []
        for _ in range(count):
            other = make_product(int(rng.integers(1_000_000, 2_000_000)), seed)
            base = stand.base_y - float(rng.uniform(0.0, stand.spread_y))
            height = stand.height * float(rng.uniform(0.7, 1.1))
            x = float(rng.uniform(-0.05, 1.05)) * size
            dim = float(rng.uniform(0.7, 0.95))
            yaw_raw = float(rng.uniform(-1.0, 1.0))
            items.append((base, other, height, x, dim, yaw_raw, int(rng.integers(2**31))))
        # Distractors are background: drawn at half size and scaled up, which also softens them.
        half = (size + 1) // 2
        for base, other, height, x, dim, yaw_raw, wseed in sorted(items, key=lambda it: it[0]):
            local_pose = replace(pose, yaw_raw=yaw_raw)
            view = _view(other, local_pose, height / 2, wrinkle_seed=wseed)
            small = render_layer(build_shape(other, view), (x / 2, base / 2), 0.0, 1.0, (half, half), ss=1)
            if small is not None:
                composite_layer(img, upscale_layer(small, size), dim)
                drawn += 1
    return drawn


def _shadow(
    img: np.ndarray,
    layer: Layer,
    kind: str,
    pose: _Pose,
    anchor: tuple[float, float],
    base_half: float,
    size: int,
) -> None:
    """Darken the backdrop where the product's shadow falls; the mask never includes it.

    Shadows are soft, so they are built at half resolution and scaled back up.
    """
    half = (size + 1) // 2
    h, w = layer.alpha.shape
    full = np.zeros((half * 2, half * 2), dtype=np.uint8)
    full[layer.y0 : layer.y0 + h, layer.x0 : layer.x0 + w] = np.round(layer.alpha * 255).astype(np.uint8)
    silhouette = Image.fromarray(full, mode="L").reduce(2)
    product_h = layer.alpha.shape[0]
    blur = ImageFilter.GaussianBlur(0.5 + pose.shadow_blur * product_h / 2)
    ax, ay = anchor[0] / 2, anchor[1] / 2
    if kind == "cast":
        # Ground shadow: each point at height k above the base lands k·q higher in the image,
        # sheared away from the light.
        q = pose.shadow_squash
        shear = -math.sin(pose.light_az) * pose.shadow_shear
        data = (1.0, shear / q, -shear * ay / q, 0.0, 1.0 / q, ay * (1.0 - 1.0 / q))
        cast = silhouette.transform((half, half), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
        shade = np.asarray(cast.filter(blur), dtype=F32) * (pose.shadow_strength / 255.0)
        contact = Image.new("L", (half, half), 0)
        rx = base_half * pose.stretch * 1.12 / 2
        ry = max(1.0, 0.015 * product_h)
        ImageDraw.Draw(contact).ellipse((ax - rx, ay - ry, ax + rx, ay + 0.6 * ry), fill=255)
        soft = contact.filter(ImageFilter.GaussianBlur(max(0.5, 0.6 * ry)))
        touch = np.asarray(soft, dtype=F32) * (pose.contact_strength / 255.0)
        shade = 1.0 - (1.0 - shade) * (1.0 - touch)
    else:
        dx = -math.sin(pose.light_az) * pose.drop_offset * half
        dy = pose.drop_offset * half * 0.6
        data = (1.0, 0.0, -dx, 0.0, 1.0, -dy)
        moved = silhouette.transform((half, half), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
        shade = np.asarray(moved.filter(blur), dtype=F32) * (pose.shadow_strength * 0.8 / 255.0)
    up = Image.fromarray(np.round(shade * 255.0).astype(np.uint8), mode="L")
    up = up.resize((half * 2, half * 2), Image.Resampling.BILINEAR).crop((0, 0, size, size))
    box = up.getbbox()
    if box is None:
        return
    x0, y0, x1, y1 = box
    region = np.asarray(up.crop(box), dtype=F32) * (1.0 / 255.0)
    img[:, y0:y1, x0:x1] *= 1.0 - region


def render_photo(
    spec: ProductSpec,
    photo_index: int,
    seed: int,
    size_px: int = 512,
    *,
    background: str | None = None,
    shadow: bool | None = None,
) -> RenderedPhoto:
    """Render photo ``photo_index`` of ``spec``: same arguments, same pixels, byte for byte.

    ``background`` forces a backdrop kind (one of ``BACKGROUNDS``) and ``shadow`` forces a
    shadow on or off; neither changes the product's pose, so the mask stays the same.
    """
    _check_size(size_px)
    if photo_index < 0 or seed < 0:
        raise ValueError("photo_index and seed must be non-negative")
    if background is not None and background not in BUILDERS:
        raise ValueError(f"unknown background {background!r}; known: {', '.join(BACKGROUNDS)}")
    pose_rng, bg_rng, extra_rng, grain_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, spec.sku_index, photo_index]).spawn(4)
    )
    pose = _Pose.draw(pose_rng)
    # Placement follows the drawn kind, so forcing a backdrop never moves the product.
    kind = background or pose.kind
    size = size_px

    view, anchor, corners = _place(spec, pose, size)
    shape = build_shape(spec, view)
    layer = render_layer(shape, anchor, pose.angle, pose.stretch, (size, size))
    if layer is None:  # cannot happen: _place keeps the extent inside the frame
        raise AssertionError("product fell outside the frame")

    placement = Placement.around(corners, size)
    backdrop = BUILDERS[kind](bg_rng, placement)
    img = backdrop.image
    n_distractors = _distractors(img, backdrop.stands, extra_rng, pose, seed, size)
    if backdrop.overlay is not None:
        premul, alpha = backdrop.overlay
        rows = np.flatnonzero(alpha.any(axis=1))
        if rows.size:
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            img[:, r0:r1] = img[:, r0:r1] * (1.0 - alpha[r0:r1]) + premul[:, r0:r1]
    if pose.defocus_roll < 0.35:
        # Blurred at half size: the upscale adds to the blur and costs a quarter of the work.
        small = to_image(img).reduce(2).filter(ImageFilter.GaussianBlur(pose.defocus / 2))
        img = planar(small.resize((size, size), Image.Resampling.BILINEAR))

    grounded = kind in GROUNDED
    wants_shadow = pose.shadow_roll < (0.85 if grounded else 0.6) if shadow is None else shadow
    shadow_kind = ("cast" if grounded else "drop") if wants_shadow else "none"
    if shadow_kind != "none":
        _shadow(img, layer, shadow_kind, pose, anchor, shape.base_half_width, size)
    composite_layer(img, layer)

    # Sensor grain: uniform noise with the drawn standard deviation (cheaper than normal draws).
    grain = (grain_rng.random((size, size), dtype=F32) - 0.5) * (pose.grain * math.sqrt(12.0))
    for k in range(3):
        img[k] *= pose.gain * (1.0 + pose.tint[k])
        img[k] += grain
    image = to_image(img)

    alpha_full = np.zeros((size, size), dtype=F32)
    h, w = layer.alpha.shape
    alpha_full[layer.y0 : layer.y0 + h, layer.x0 : layer.x0 + w] = layer.alpha
    mask = np.where(alpha_full >= 0.5, 255, 0).astype(np.uint8)
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
    bbox = [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1] if ys.size else None
    metadata: dict[str, Any] = {
        "sku_id": spec.sku_id,
        "shape": spec.shape,
        "category": spec.category,
        "main_colour": spec.main_colour,
        "main_rgb": list(spec.main_rgb),
        "secondary_colour": spec.secondary_colour,
        "pattern": spec.pattern,
        "background": kind,
        "shadow": shadow_kind,
        "distractors": n_distractors,
        "bbox": bbox,
        "foreground_fraction": round(float(mask.mean()) / 255.0, 4),
        "product_height_fraction": round(view.height / size, 4),
        "rotation_deg": round(math.degrees(pose.angle), 2),
        "seed": seed,
        "photo_index": photo_index,
        "size": size,
    }
    return RenderedPhoto(image=image, mask=mask, metadata=metadata)


def render_dataset(n: int, seed: int, size_px: int = 512) -> Iterator[RenderedPhoto]:
    """``n`` photos of ``n`` different products of catalogue ``seed`` (one photo each), lazily."""
    for i in range(n):
        yield render_photo(make_product(i, seed), 0, seed, size_px)


def photo_filename(photo_index: int) -> str:
    """``photo_01.png`` for photo index 0."""
    return f"photo_{photo_index + 1:02d}.png"


def write_sku_folders(out: Path, skus: int, photos_per_sku: int, seed: int, size_px: int = 512) -> list[Path]:
    """Write a synthetic catalogue under ``out`` and return the SKU folders, in order.

    Layout: ``skus/<sku_id>/metadata.json`` and ``photo_NN.png`` (what ``skuforge ingest``
    reads), ``masks/<sku_id>/photo_NN.png`` (0/255 masks) and ``truth.jsonl`` (one line per
    photo). Earlier ``photo_*.png`` files in these SKU folders are removed first, so a folder
    never mixes two runs, and an earlier ``truth.jsonl`` before anything else, so a run that fails
    part way leaves no truth about photos it replaced; use a fresh ``out`` to avoid leftover SKU
    folders of bigger runs. Bad arguments are refused before anything under ``out`` is touched.
    """
    if skus < 1 or photos_per_sku < 1:
        raise ValueError("skus and photos_per_sku must be at least 1")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    _check_size(size_px)
    sku_id_for(skus - 1, seed)  # the run's longest id: a seed too long for it is refused here
    out = Path(out)
    (out / "truth.jsonl").unlink(missing_ok=True)
    folders: list[Path] = []
    truth: list[str] = []
    for i in range(skus):
        spec = make_product(i, seed)
        folder = out / "skus" / spec.sku_id
        mask_folder = out / "masks" / spec.sku_id
        for d in (folder, mask_folder):
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob("photo_*.png"):
                old.unlink()
        (folder / "metadata.json").write_text(json.dumps(spec.metadata(), indent=2) + "\n", encoding="utf-8")
        for k in range(photos_per_sku):
            photo = render_photo(spec, k, seed, size_px)
            name = photo_filename(k)
            (folder / name).write_bytes(photo.png())
            (mask_folder / name).write_bytes(photo.mask_png())
            m = photo.metadata
            truth.append(
                json.dumps(
                    {
                        "sku_id": spec.sku_id,
                        "photo": f"skus/{spec.sku_id}/{name}",
                        "mask": f"masks/{spec.sku_id}/{name}",
                        "shape": spec.shape,
                        "category": spec.category,
                        "main_colour": spec.main_colour,
                        "secondary_colour": spec.secondary_colour,
                        "background": m["background"],
                        "shadow": m["shadow"],
                        "bbox": m["bbox"],
                    }
                )
            )
        folders.append(folder)
    (out / "truth.jsonl").write_text("\n".join(truth) + "\n", encoding="utf-8")
    return folders
