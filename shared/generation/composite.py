"""The ``composite`` backend: the product's own pixels placed on new, procedurally generated scenes.

No weights, CPU-fast, and a real augmentation: the reference cut-out (reference photo x product
mask, its outer pixels recoloured from inside so that the photo's own background, a catalogue's
white, does not ride along as a pale rim) is warped (scale, position, rotation, perspective) onto a
scene from ``shared.synth``'s backdrops (studio sweep, wooden table, store shelf with other
products, clutter, gradients, textures), gets a shadow, may be partly hidden by other products
standing in front of it, and the whole frame then gets a light gradient, a colour temperature, blur
and sensor noise.

The expected mask is where the product's own pixels dominate the output: the warped product
coverage times what the occluders leave visible, at or above one half. Shadows, light and noise
change pixel values, never that mask.

Every knob is drawn up front from ``SeedSequence([seed, variant])`` in a fixed order, then any
key given in ``request.parameters`` replaces the drawn value, so overriding one knob never moves
the others; the backdrop, the other products and the noise come from the plan's ``scene_seed``.
The values used are returned as the sample's ``parameters``: sent back as parameters, they
reproduce the image byte for byte. Every variant also reports the colour gain the product was given on
purpose (``applied_colour_gain``, measured, ignored when sent back): a photo scene's match times the
frame's light (gain, gradient and colour temperature, averaged over the product's visible pixels), so
that the gate can tell a deliberate change from colour drift.

With a scene library (``SKUFORGE_SCENES_URI``, ``shared/generation/scenes.py``), a share of the
variants (``SKUFORGE_SCENES_PHOTO_SHARE``) go on real photos instead (``scene="photo"``): a crop of
a background photo, defocused so that the products in it are not recognisable, the product framed
as in its own reference photo (it fills about as much of the frame), its white balance and
brightness pulled towards the scene's, a contact shadow, and sometimes a piece of the scene in front
of it (the expected mask leaves the hidden part out). ``docs/evaluation.md`` says which of these
choices were measured to help a classifier, and by how much.

Other products (on shelves, on the table, in front of the product) come from a fixed pool of
rendered sprites, scaled to size, because rendering a product is most of a composite's cost. Layers
are blended and upscaled with the renderer's own ``composite_layer`` / ``upscale_layer``, so both
draw products alike.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from shared.arith.masks import erode
from shared.generation.backend import (
    COLOUR_GAIN_KEY,
    GeneratedSample,
    GenerationRequest,
    RowOutcome,
    generate_one_by_one,
    seed_entropy,
)
from shared.generation.scenes import Scene, SceneLibrary
from shared.synth.backgrounds import BACKGROUNDS, BUILDERS, GROUNDED, Placement, Stand, to_image
from shared.synth.products import make_product
from shared.synth.shapes import Layer, View, build_shape, composite_layer, render_layer, upscale_layer

F32 = np.float32
MODEL_ID = "composite-v1"
MIN_SIZE_PX = 64
# Scene kinds and how often each is drawn: shelves and tables are the deployment domain.
SCENES: tuple[str, ...] = BACKGROUNDS
PHOTO_SCENE = "photo"  # a photo from the scene library
_SCENE_WEIGHTS = np.array([0.2, 0.2, 0.25, 0.1, 0.1, 0.15])
# Distractor/occluder products are drawn from this catalogue, far from any real sku_index.
_OTHER_PRODUCTS_SEED = 7
SHADOWS = ("none", "drop", "cast")
# The dimmest the scene's light may fall anywhere in the frame (1 is the reference's own exposure):
# below zero the product came out black and its declared colour gain negative.
MIN_LIGHT_LEVEL = 0.05
# How deep into the product its photo's background shows (the edge pixels blended with it, and a mask
# a pixel or two too wide): that band's colour is rebuilt from the pixels inside it (decontaminate_edge).
EDGE_BAND_PX = 3
# How the product is placed on a photo scene: one item, framed like its reference photo, or a pile of
# copies filling most of the frame, the way loose produce is photographed in a store.
ARRANGEMENTS = ("single", "pile")
# What a pile reports for the knobs it does not use, whatever was drawn (another value asked for is
# refused, but reference_framing: measured for every request): no occluder, no shadow (so no strength),
# no turn or keystone of its own (each copy gets its own turn), centred (its copies spread over the
# frame) and no reference framing (its copies' size follows ``framing`` alone).
_PILE_PLACEMENT: dict[str, Any] = {
    "occluders": 0,
    "shadow": "none",
    "shadow_strength": 0.0,
    "rotation_deg": 0.0,
    "perspective_x": 0.0,
    "perspective_y": 0.0,
    "pos_x": 0.5,
    "pos_y": 0.5,
    "reference_framing": 0.0,
}


class CompositeError(ValueError):
    """A request the composite backend cannot serve; the message says what to change."""


# The least height of the product on a procedural scene's canvas, before rotation and keystone (and the
# least a photo scene's framing places). A height_fraction under it was taken: the product came out a
# speck of a pixel or two, or nothing, refused as a mask "too thin or scattered" (the photos blamed).
MIN_PRODUCT_HEIGHT_PX = 2


def check_height(height_fraction: float, size_px: int) -> None:
    """``CompositeError`` where ``height_fraction`` places a product on a procedural scene under
    ``MIN_PRODUCT_HEIGHT_PX`` tall on a ``size_px`` canvas (a photo scene's framing decides its size)."""
    least = MIN_PRODUCT_HEIGHT_PX / size_px
    if height_fraction < least:
        raise CompositeError(
            f"height_fraction {height_fraction:g} places the product {height_fraction * size_px:.2g} px tall "
            f"on a {size_px} px canvas: it must be at least {least:.4g} ({MIN_PRODUCT_HEIGHT_PX} px at "
            f"{size_px} px); leave it out to draw one from 0.35 to 0.7"
        )


def _check_pile_asked(asked: dict[str, Any], values: dict[str, Any]) -> None:
    """Refuse what a pile cannot honour among the knobs ``asked`` (``values``: as parsed): a procedural
    scene, or a placement of its own. Both were replaced without a word (a studio scene got one product,
    a cast shadow none); a pile's own values (what it records: shadow "none", occluders 0) are accepted,
    so that a replay is. A procedural scene drawn, not asked for, still places one product."""
    if "scene" in asked and values["scene"] != PHOTO_SCENE:
        raise CompositeError(
            f"arrangement 'pile' heaps copies on a photo scene, but scene {values['scene']!r} is "
            f"procedural: ask for scene {PHOTO_SCENE!r}, leave scene out, or ask for arrangement 'single'"
        )
    # reference_framing is not asked of a pile but measured for every request (the generator's crop).
    for key, pile_value in _PILE_PLACEMENT.items():
        if key in asked and key != "reference_framing" and values[key] != pile_value:
            raise CompositeError(
                f"a pile places its copies itself and cannot honour {key}={asked[key]!r} (it uses "
                f"{pile_value!r}): leave {key} out, or ask for arrangement 'single'"
            )


@dataclass(frozen=True)
class _Plan:
    """Every knob of one variant (what ``parameters`` reports)."""

    scene: str
    # Product height / canvas side, before rotation. On a photo scene the reference photo's framing
    # decides the size instead (``framing``), and ``parameters`` report the fraction that came out
    # (a pile: its copies' mean), not the drawn one, which nothing used; sent back, it changes nothing.
    # A wide product narrowed to fit reports the fraction it came to too; sent back, it draws the same.
    height_fraction: float
    rotation_deg: float
    perspective_x: float  # keystone: right edge taller (+) or shorter (-) than the left
    perspective_y: float  # bottom edge wider (+) or narrower (-) than the top
    pos_x: float  # 0..1 across the free horizontal range
    pos_y: float  # 0..1 across the free vertical range
    shadow: str
    shadow_strength: float
    light_gain: float
    light_angle_deg: float
    light_gradient: float  # brightness change across the frame along light_angle_deg
    colour_temperature: float  # -1 cool (blue) .. +1 warm (red)
    blur_px: float
    noise_sigma: float
    # A pile has none, and no shadow: it reports _PILE_PLACEMENT whatever was drawn. A photo scene has
    # one at most (a piece of the scene): more asked, it reports 1.
    occluders: int
    scene_seed: int  # backdrop, other products and noise are drawn from it
    # Photo scenes only (scene == "photo"); drawn for every variant so that the draw order is fixed.
    scene_key: str  # key of the photo in the scene library; "" for procedural scenes
    scene_blur: float  # background defocus, Gaussian sigma as a fraction of the canvas side
    scene_match: float  # 0..1: how far the product's white balance and brightness move to the scene's
    framing: float  # product's longer side / canvas side, relative to the reference photo's framing
    # Not drawn (a request chooses it; the generator stage asks for piles of loose produce); last, so
    # that adding it moved no drawn value. A procedural scene drawn places one product (the variant
    # reports "single"); one asked for with a pile is refused.
    arrangement: str = "single"
    # Not drawn: the reference photo's framing (``product_framing``) measured before the caller
    # cropped the reference to the product; 0 measures it on the reference as given.
    reference_framing: float = 0.0

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        scenes: SceneLibrary | None = None,
        photo_share: float = 0.0,
        own_names: tuple[str | None, ...] = (),
    ) -> _Plan:
        scene = SCENES[int(rng.choice(len(SCENES), p=_SCENE_WEIGHTS / _SCENE_WEIGHTS.sum()))]
        grounded = scene in GROUNDED
        shadow_roll = float(rng.random())
        plan = cls(
            scene=scene,
            height_fraction=float(rng.uniform(0.35, 0.7)),
            rotation_deg=float(np.clip(rng.normal(0.0, 4.0), -12.0, 12.0)),
            perspective_x=float(rng.uniform(-0.12, 0.12)),
            perspective_y=float(rng.uniform(-0.08, 0.08)),
            pos_x=float(rng.beta(2.0, 2.0)),
            pos_y=float(rng.beta(2.0, 2.0)),
            shadow=("cast" if grounded else "drop") if shadow_roll < 0.75 else "none",
            shadow_strength=float(rng.uniform(0.25, 0.55)),
            light_gain=float(rng.uniform(0.8, 1.15)),
            light_angle_deg=float(rng.uniform(0.0, 360.0)),
            light_gradient=float(rng.uniform(0.0, 0.3)),
            colour_temperature=float(rng.uniform(-1.0, 1.0)),
            blur_px=0.0 if rng.random() < 0.6 else float(rng.uniform(0.4, 1.4)),
            noise_sigma=float(rng.uniform(0.002, 0.02)),
            occluders=int(rng.choice(3, p=[0.6, 0.3, 0.1])),
            scene_seed=int(rng.integers(2**31)),
            scene_key=_draw_photo(rng, scenes, photo_share, own_names),
            scene_blur=float(rng.uniform(0.015, 0.03)),
            scene_match=float(rng.uniform(0.2, 0.6)),
            framing=float(rng.uniform(0.8, 1.1)),
        )
        return plan._photo_if_drawn()._without_unused_strength()

    def _photo_if_drawn(self) -> _Plan:
        """A plan whose scene_key was drawn becomes a photo plan: few occluders, its own blur."""
        if not self.scene_key:
            return self
        # One in ten photo variants has a piece of the scene in front (occlusion helped no classifier
        # on val, and a cut-out edge across the product is itself an artefact to learn).
        values = {**self.__dict__, "scene": PHOTO_SCENE, "occluders": 1 if self.occluders == 2 else 0}
        values["blur_px"] = 0.0 if self.blur_px == 0.0 else min(self.blur_px, 0.8)
        values["shadow"] = "drop" if self.shadow != "none" else "none"
        return _Plan(**values)

    def _without_unused_strength(self) -> _Plan:
        """No shadow, so no strength: the drawn (or asked) one was recorded, though no pixel had it.
        Not refused when asked: every shadow-less variant recorded before carries a drawn strength
        beside shadow "none", and its replay is served (the same image; the record now says 0)."""
        return replace(self, shadow_strength=0.0) if self.shadow == "none" else self

    def override(self, parameters: dict[str, Any], scenes: SceneLibrary | None = None) -> _Plan:
        """This plan with the keys of ``parameters`` replaced; unknown keys and bad values are errors.

        ``applied_colour_gain`` is reported, not drawn (it is measured from the scene), so a replayed
        parameter set may carry it: it is ignored.
        """
        parameters = {key: value for key, value in parameters.items() if key != COLOUR_GAIN_KEY}
        known = self.__dataclass_fields__
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise CompositeError(
                f"unknown composite parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = {**self.__dict__}
        for key, value in parameters.items():
            values[key] = _knob_value(key, value, type(values[key]))
        plan = _Plan(**values)
        if plan.scene == PHOTO_SCENE:
            if scenes is None:
                raise CompositeError("scene 'photo' needs a scene library: set SKUFORGE_SCENES_URI")
            if not plan.scene_key:
                raise CompositeError(
                    "scene_key is empty: name a photo of the scene library, or leave it out to draw one"
                )
            if plan.scene_key not in scenes:
                raise CompositeError(f"scene_key {plan.scene_key!r} is not in the scene library")
        elif plan.scene not in SCENES:
            scene_names = ", ".join((*SCENES, PHOTO_SCENE))
            raise CompositeError(f"unknown scene {plan.scene!r}; known: {scene_names}")
        elif plan.scene_key:
            raise CompositeError(
                f"scene_key {plan.scene_key!r} names a photo, but scene {plan.scene!r} is procedural: "
                f"ask for scene {PHOTO_SCENE!r}, or leave scene out"
            )
        if plan.arrangement not in ARRANGEMENTS:
            raise CompositeError(
                f"unknown arrangement {plan.arrangement!r}; known: {', '.join(ARRANGEMENTS)}"
            )
        if plan.arrangement == "pile":
            _check_pile_asked(parameters, values)
        if plan.scene != PHOTO_SCENE and plan.arrangement != "single":
            # Only a drawn procedural scene (the generator asks for piles before the scene is drawn).
            plan = _Plan(**{**plan.__dict__, "arrangement": "single"})
        if plan.shadow not in SHADOWS:
            raise CompositeError(f"unknown shadow {plan.shadow!r}; known: {', '.join(SHADOWS)}")
        if plan.scene == PHOTO_SCENE:
            # Reported, not used, on a photo (the framing decides); a replayed value is what came out.
            if not 0.0 < plan.height_fraction <= 1.0:
                raise CompositeError("height_fraction must be in 0..1")
        elif not 0.0 < plan.height_fraction <= 0.95:
            # No floor at 0.05: a product over 12:1 narrowed to fit records less; its replay is served.
            # The floor is in pixels (check_height), where the canvas is known.
            raise CompositeError("height_fraction must be above 0 and at most 0.95")
        if not 0 <= plan.occluders <= 4:
            raise CompositeError("occluders must be between 0 and 4")
        if plan.blur_px < 0 or plan.noise_sigma < 0 or plan.light_gain <= 0:
            raise CompositeError("blur_px and noise_sigma must be >= 0, light_gain > 0")
        if plan.scene_blur < 0 or not 0 <= plan.scene_match <= 1 or not 0.2 <= plan.framing <= 2:
            raise CompositeError("scene_blur must be >= 0, scene_match in 0..1, framing in 0.2..2")
        if not 0 <= plan.reference_framing <= 1:
            raise CompositeError("reference_framing must be in 0..1 (0: measure it on the reference)")
        # Out of these ranges the light's colour gain went negative or infinite (colour_temperature
        # 100, light_gain 1e308): the event could not be built after its PNGs were written, and the
        # SKU was dead-lettered as a handler error instead of a refused variant.
        bounds = {
            "colour_temperature": (-1.0, 1.0),
            # The gate fails a declared colour gain beyond x2 either way (MAX_DECLARED_GAIN): a light
            # much outside this range sent every image to the console.
            "light_gain": (0.6, 1.6),
            "light_gradient": (0.0, 1.0),
            "light_angle_deg": (-360.0, 720.0),
            "pos_x": (0.0, 1.0),
            "pos_y": (0.0, 1.0),
            "shadow_strength": (0.0, 1.0),
            "rotation_deg": (-90.0, 90.0),
            "perspective_x": (-0.5, 0.5),
            "perspective_y": (-0.5, 0.5),
            "blur_px": (0.0, 50.0),
            "noise_sigma": (0.0, 0.5),
            "scene_blur": (0.0, 0.5),
        }
        for key, (low, high) in bounds.items():
            value = getattr(plan, key)
            if not (math.isfinite(value) and low <= value <= high):
                raise CompositeError(
                    f"composite parameter {key} must be from {low:g} to {high:g}, got {value!r}"
                )
        # The gradient spans the frame: at a diagonal angle a corner gets up to sqrt(0.5) of it less
        # light. Checked for every angle, so that a limit does not depend on light_angle_deg.
        darkest = plan.light_gain - plan.light_gradient * math.sqrt(0.5)
        if darkest < MIN_LIGHT_LEVEL:
            raise CompositeError(
                f"light_gain {plan.light_gain:g} with light_gradient {plan.light_gradient:g} leaves a "
                f"corner of the frame at {darkest:.3f} of the light; light_gain - light_gradient * 0.707 "
                f"must be at least {MIN_LIGHT_LEVEL:g}: raise light_gain or lower light_gradient"
            )
        if not 0 <= plan.scene_seed < 2**63:
            raise CompositeError(
                f"composite parameter scene_seed must be from 0 to 2^63-1, got {plan.scene_seed}"
            )
        if plan.arrangement == "pile":
            # A pile has no occluder and no shadow (its copies hide one another), and places its copies
            # itself (each its own size and turn, no keystone, spread over the frame, sized by framing):
            # the drawn values, reported as they were, put in the lineage record what no image had.
            plan = replace(plan, **_PILE_PLACEMENT)
        elif plan.scene == PHOTO_SCENE and plan.occluders > 1:
            # A photo scene puts one piece of itself in front (_scene_occluder): 2 or 4 asked drew the
            # image of 1 and recorded what no image had. Not refused: a replay of such a record is served.
            plan = replace(plan, occluders=1)
        return plan._without_unused_strength()

    def as_json(self) -> dict[str, Any]:
        """The plan as JSON-able parameters (full precision: sent back, they replay the image)."""
        return dict(self.__dict__)


class CompositeBackend:
    """Places the reference cut-out on procedural scenes, or on real photos; see the module docstring."""

    name = "composite"
    model_id = MODEL_ID

    def __init__(
        self, scenes: SceneLibrary | None = None, photo_share: float = 0.0, *, edge_recolour: bool = True
    ) -> None:
        """``edge_recolour=False`` keeps the cut-out's own outer pixels (``decontaminate_edge`` off): the
        benchmarks' try of what the recolour does, never the served backend."""
        if not 0.0 <= photo_share <= 1.0:
            raise ValueError(f"photo_share must be in 0..1, got {photo_share}")
        self.scenes = scenes
        self.photo_share = photo_share if scenes is not None else 0.0
        self.edge_recolour = edge_recolour

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        """Each request on its own: compositing is numpy on one image, batching gains nothing."""
        return generate_one_by_one(self, requests)

    def generate(self, request: GenerationRequest) -> list[GeneratedSample]:
        """``request.n`` variants; variant ``i`` depends only on (seed, i, parameters, inputs, scenes)."""
        cutout = _Cutout.from_request(request, edge_recolour=self.edge_recolour)
        asked = _with_implied_scene(request.parameters)
        samples = []
        for variant in range(request.n):
            plan_rng = np.random.default_rng(np.random.SeedSequence([seed_entropy(request.seed), variant]))
            # No scene tagged like the SKU's series, category or product name (``SceneLibrary.keys_for``):
            # a lemon never lands on a pile of lemons, which would teach the lemon class other lemons.
            own_names = (request.series, *request.own_names)
            # {"scene": "photo"} without a scene_key asks for a photo scene in every variant: drawn from
            # the library as always (same draws, so the other knobs do not change), whatever the share.
            # Before, a variant whose roll fell on a procedural scene kept scene_key "" and was refused.
            # A photo asked for by its key draws a photo plan too (its occluders, blur and shadow), not
            # one drawn for a procedural scene in 1 - share of the variants.
            photo = asked.get("scene") == PHOTO_SCENE
            forced = photo and "scene_key" not in asked
            # A procedural scene asked for ({"scene": "table"}) draws no photo either: drawn one, the plan
            # was made a photo plan (fewer occluders, no cast shadow, a photo's key reported) before the
            # scene was set back, so the same setting gave another augmentation once a library was loaded.
            procedural = "scene" in asked and not photo
            share = 1.0 if photo else 0.0 if procedural else self.photo_share
            drawn = _Plan.draw(plan_rng, self.scenes, share, own_names)
            if forced and self.scenes is not None and not drawn.scene_key:
                raise CompositeError(
                    "scene 'photo' asked for, but every scene in the library is tagged like this SKU's "
                    "series, category or name (a product is never composited onto photos of itself)"
                )
            plan = drawn.override(asked, self.scenes)
            # The size is known here, not in override. A product narrowed to fit is as tall as its width
            # allows, whatever the height asked: its record (the height it came to, under the least for a
            # 30:1 product at 64 px) was served, and sent back was refused.
            if plan.scene != PHOTO_SCENE and not _narrowed_to_fit(cutout, plan, request.size):
                check_height(plan.height_fraction, request.size)
            # Only a key asked for can be the SKU's own: a drawn one is among its keys_for already.
            scenes = self.scenes if plan.scene == PHOTO_SCENE else None
            if scenes is not None and scenes.tagged_like(plan.scene_key, *own_names):
                raise CompositeError(
                    f"scene_key {plan.scene_key!r} is tagged like this SKU's series, category or name "
                    "(a product is never composited onto photos of itself): name a photo of another "
                    "folder, or leave scene_key out to draw one"
                )
            # The scene's own randomness comes from the plan, so the reported parameters replay it.
            scene_rng, extra_rng, noise_rng = (
                np.random.default_rng(s) for s in np.random.SeedSequence(plan.scene_seed).spawn(3)
            )
            parameters = plan.as_json()
            if plan.scene == PHOTO_SCENE:
                assert self.scenes is not None  # override() checked it
                image, expected_mask, gain, height_fraction = render_photo_variant(
                    cutout,
                    plan,
                    request.size,
                    self.scenes.get(plan.scene_key).pixels,
                    scene_rng=scene_rng,
                    noise_rng=noise_rng,
                )
            else:
                image, expected_mask, gain, height_fraction = render_variant(
                    cutout, plan, request.size, scene_rng=scene_rng, extra_rng=extra_rng, noise_rng=noise_rng
                )
            # What came out: a photo's framing decides it, and a wide product is narrowed to fit.
            parameters["height_fraction"] = height_fraction
            # Measured, not a knob: the gate applies it to the reference before it measures drift.
            parameters[COLOUR_GAIN_KEY] = [round(float(g), 6) for g in gain]
            samples.append(
                GeneratedSample(
                    image=image, expected_mask=expected_mask, parameters=parameters, adapter_id=None
                )
            )
        return samples


@dataclass(frozen=True)
class _Cutout:
    """The product's pixels: the reference cropped to the mask's bounding box, as premultiplied RGBa."""

    rgba: Image.Image  # mode "RGBa": colour already multiplied by the mask
    framing: float = 0.8  # product's longer side / the reference photo's side along it

    @classmethod
    def from_request(cls, request: GenerationRequest, *, edge_recolour: bool = True) -> _Cutout:
        reference, mask = request.reference, request.mask
        if reference.ndim != 3 or reference.shape[2] != 3 or reference.dtype != np.uint8:
            raise CompositeError(
                f"reference must be H x W x 3 uint8, got {reference.shape} {reference.dtype}"
            )
        if mask.shape != reference.shape[:2]:
            raise CompositeError(
                f"mask is {mask.shape}, the reference is {reference.shape[:2]}: they must match"
            )
        if request.size < MIN_SIZE_PX:
            raise CompositeError(f"size must be at least {MIN_SIZE_PX} px, got {request.size}")
        if request.n < 1:
            raise CompositeError(f"n must be at least 1, got {request.n}")
        binary = mask >= 128
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        if rows.size == 0:
            raise CompositeError("the product mask is empty: nothing to place")
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        inside = binary[y0:y1, x0:x1]
        alpha = np.where(inside, 255, 0).astype(np.uint8)
        rgb = reference[y0:y1, x0:x1]
        rgba = np.dstack([decontaminate_edge(rgb, inside) if edge_recolour else rgb, alpha])
        return cls(Image.fromarray(rgba, mode="RGBA").convert("RGBa"), product_framing(binary))


def decontaminate_edge(
    rgb: npt.NDArray[np.uint8], inside: npt.NDArray[np.bool_], band_px: int = EDGE_BAND_PX
) -> npt.NDArray[np.uint8]:
    """``rgb`` with the product's outer ``band_px`` pixels (of ``inside``) recoloured from further in.

    A photo's edge pixels are the product blended with what was behind it (a catalogue photo's white):
    pasted on a scene they draw a pale rim, which a classifier learns as "synthetic". Each ring of the
    band, from the inside out, takes the mean colour of its already-known 8-neighbours (masked
    dilation of the interior's colour). Pixels outside ``inside``, and thin parts farther than
    ``band_px + 1`` from the interior (a stalk), keep their colour; the mask itself is not changed.
    """
    # The pixels more than band_px inside the outline (the frame's border counts as outside).
    core = erode(inside, band_px)
    if not core.any():
        return rgb
    # Only the band's pixels are worked on (a few percent of the cut-out), by flat index into the
    # cut-out padded by one pixel, so that every pixel has eight neighbours.
    stride = inside.shape[1] + 2
    band = np.flatnonzero(np.pad(inside & ~core, 1))
    neighbours = band[:, None] + np.array(
        [-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1]
    )
    known = np.pad(core, 1).ravel()
    colour = np.pad(rgb, ((1, 1), (1, 1), (0, 0))).reshape(-1, 3).astype(F32)
    # One pass more than the band is deep: a pixel jutting out of the outline is a ring further out.
    # Not more: a stalk thinner than the band, all of it edge, keeps its own colour beyond that.
    for _ in range(band_px + 1):
        band, neighbours = band[~known[band]], neighbours[~known[band]]
        weights = known[neighbours].astype(F32)
        counts = weights.sum(axis=1)
        ring = counts > 0
        if not ring.any():
            break
        ring_pixels, weights = band[ring], weights[ring]
        colour[ring_pixels] = np.einsum("nk,nkc->nc", weights, colour[neighbours[ring]]) / counts[ring, None]
        known[ring_pixels] = True
    recoloured = np.flatnonzero(known & ~np.pad(core, 1).ravel())
    out = rgb.copy()
    out[recoloured // stride - 1, recoloured % stride - 1] = np.clip(
        colour[recoloured] + F32(0.5), 0, 255
    ).astype(np.uint8)
    return out


def product_framing(mask: npt.NDArray[Any]) -> float:
    """How much of the photo the product fills: its bounding box's longer side over the photo's side
    along it (0..1; 0 for an empty mask). A composite frames the product the same way."""
    binary = np.asarray(mask) >= 128 if np.asarray(mask).dtype != np.bool_ else np.asarray(mask)
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    if rows.size == 0:
        return 0.0
    height, width = binary.shape
    return max((int(rows[-1]) + 1 - int(rows[0])) / height, (int(cols[-1]) + 1 - int(cols[0])) / width)


def render_variant(
    cutout: _Cutout,
    plan: _Plan,
    size: int,
    *,
    scene_rng: np.random.Generator,
    extra_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.float32], float]:
    """One image (size x size x 3), its expected mask (size x size, 0/255), the colour gain the
    scene's light gave the product (per channel, R, G, B; see ``_light``) for ``plan`` and the product's
    height / canvas side it came to (``plan.height_fraction`` unless a wide product was narrowed to fit;
    not the shrink an extreme turn or keystone needs, which the record could not replay)."""
    product, corners, height_fraction = _place_product(cutout, plan, size, replayable=True)
    placement = Placement.around(corners, size)
    backdrop = BUILDERS[plan.scene](scene_rng, placement)
    img = backdrop.image
    _others_behind(img, backdrop.stands, extra_rng, size)
    if backdrop.overlay is not None:
        premul, alpha = backdrop.overlay
        img *= 1.0 - alpha
        img += premul
    if plan.shadow != "none":
        _shadow(img, product, plan, placement)
    expected_mask = _composite_product(img, product, _occluders(plan.occluders, extra_rng, product, size))
    light = _light(img, plan, size, expected_mask)
    return _finish(img, plan, size, noise_rng), expected_mask, light, height_fraction


def _composite_product(
    img: npt.NDArray[np.float32], product: Layer, occluders: list[Layer]
) -> npt.NDArray[np.uint8]:
    """Blend the product, then the occluders in front of it, into ``img``; returns the expected mask.

    The mask is how much of each pixel is the product's own colour (its coverage, minus what the
    occluders hide), at or above one half; ``CompositeError`` where that leaves no pixel.
    """
    composite_layer(img, product)
    visible = np.zeros(img.shape[1:], dtype=F32)
    h, w = product.alpha.shape
    visible[product.y0 : product.y0 + h, product.x0 : product.x0 + w] = product.alpha
    for layer in occluders:
        composite_layer(img, layer)
        h, w = layer.alpha.shape
        visible[layer.y0 : layer.y0 + h, layer.x0 : layer.x0 + w] *= 1.0 - layer.alpha
    expected = visible >= 0.5
    if not expected.any():
        # A product placed as a pixel or two (a thin or scattered mask), under an occluder sized to it:
        # drawn, the variant was an image with an empty expected mask, stored and gated as the product's.
        raise CompositeError(
            f"what stands in front of the product hides all of it at {img.shape[1]} px: its mask is too "
            "thin or scattered to place (check the reference mask)"
        )
    return np.where(expected, 255, 0).astype(np.uint8)


def _finish(
    img: npt.NDArray[np.float32], plan: _Plan, size: int, noise_rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """Lens and sensor: the plan's blur and noise, then 8-bit H x W x 3.

    Noise goes on the light as the lens left it, over white included, and only then is the image
    clipped to 8 bits, as in a camera: a blown highlight stays white, with or without blur.
    """
    if plan.blur_px > 0:
        out = _defocus(img, plan.blur_px, size)
        # The blur works in 8 bits, which hold the light up to white only: what went over white is
        # blurred apart and added back. Clipped, a white product lit x1.3 came out grainy (half its
        # pixels below 255) with blur and white without; a frame all below white is as it was.
        if (img > 1.0).any():
            out += _defocus(img - F32(1.0), plan.blur_px, size)
    else:
        out = np.moveaxis(img, 0, -1)
    if plan.noise_sigma > 0:
        # Uniform noise with the drawn standard deviation: cheaper than normal draws, same look.
        grain = noise_rng.random((size, size, 1), dtype=F32) - 0.5
        out = out + grain * F32(plan.noise_sigma * math.sqrt(12.0))
    image = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _defocus(img: npt.NDArray[np.float32], blur_px: float, size: int) -> npt.NDArray[np.float32]:
    """``img`` (3 x S x S, clipped to 0..1 and 8 bits) blurred by ``blur_px``: S x S x 3, 0..1."""
    # Defocus at half size (a quarter of the work): the 2x box reduce and bilinear upscale are
    # themselves a blur of about 0.7 px, the Gaussian adds the rest. Scaled back by exactly 2 and
    # cropped: stretched over an odd size, the product slid up to a pixel off its expected mask.
    small = to_image(img).reduce(2)
    extra_px = blur_px / 2 - 0.35
    if extra_px > 0.05:
        small = small.filter(ImageFilter.GaussianBlur(extra_px))
    double = (small.width * 2, small.height * 2)
    blurred = small.resize(double, Image.Resampling.BILINEAR).crop((0, 0, size, size))
    return np.asarray(blurred, dtype=F32) * F32(1.0 / 255.0)


def _draw_photo(
    rng: np.random.Generator,
    scenes: SceneLibrary | None,
    photo_share: float,
    own_names: tuple[str | None, ...],
) -> str:
    """The scene-library key of a photo scene, or "" for a procedural one (always two draws), never one
    tagged like any of ``own_names`` (the SKU's series, category, product name)."""
    roll, pick = float(rng.random()), float(rng.random())
    if scenes is None or roll >= photo_share:
        return ""
    keys = scenes.keys_for(*own_names)
    return keys[min(int(pick * len(keys)), len(keys) - 1)] if keys else ""


def render_photo_variant(
    cutout: _Cutout,
    plan: _Plan,
    size: int,
    scene: npt.NDArray[np.uint8],
    *,
    scene_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.float32], float]:
    """One image, its expected mask, the colour gain the product was given, on a real photo ``scene``,
    and the product's height / canvas side it came to (before rotation; a pile: its copies' mean).

    ``scene`` is H x W x 3 uint8, any size; the gain is per channel (R, G, B): the match to the scene
    (the product's pixels only) times the light over the whole frame, as it falls on the product.
    ``plan.height_fraction`` is not used: the reference photo's framing decides the size.
    """
    img = _photo_backdrop(scene, size, plan.scene_blur * size, scene_rng)
    if plan.arrangement == "pile":
        expected_mask, gain, height_fraction = _pile(img, cutout, plan, size, scene_rng)
        light = _light(img, plan, size, expected_mask)
        return _finish(img, plan, size, noise_rng), expected_mask, gain * light, height_fraction
    # Frame the product as its reference photo does: the same share of the frame, give or take.
    w, h = cutout.rgba.size
    framing = plan.reference_framing or cutout.framing
    fill = float(np.clip(framing * plan.framing, 0.3, 0.95))
    # At least 2 px tall, not 5% of the frame: a 25:1 product (a leek, a baguette) floored at 5% came out
    # with its longer side over 0.9 of the frame whatever its reference photo showed.
    height_fraction = float(np.clip(fill * min(1.0, h / w), MIN_PRODUCT_HEIGHT_PX / size, 0.95))
    placed = _Plan(**{**plan.__dict__, "height_fraction": height_fraction})
    product, corners, height_fraction = _place_product(cutout, placed, size)
    _, gain = _match_to_scene(product, img, plan.scene_match)
    if plan.shadow != "none":
        _shadow(img, product, plan, Placement.around(corners, size))
    occluders = [_scene_occluder(scene, product, size, scene_rng)] if plan.occluders > 0 else []
    expected_mask = _composite_product(img, product, occluders)
    light = _light(img, plan, size, expected_mask)
    return _finish(img, plan, size, noise_rng), expected_mask, gain * light, height_fraction


def _photo_backdrop(
    scene: npt.NDArray[np.uint8], size: int, blur_px: float, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """A square crop of ``scene``, size x size (upscaled if the photo is smaller), defocused: 3 x S x S."""
    height, width = scene.shape[:2]
    side = max(1, round(min(height, width) * float(rng.uniform(0.55, 1.0))))
    y0, x0 = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    crop = Image.fromarray(scene[y0 : y0 + side, x0 : x0 + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Defocus at half size, as a lens would: the products in the scene stop being recognisable.
    half = (size + 1) // 2
    small = crop.resize((half, half), Image.Resampling.BILINEAR)
    if blur_px / 2 > 0.05:
        small = small.filter(ImageFilter.GaussianBlur(blur_px / 2))
    full = small.resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.moveaxis(np.asarray(full, dtype=F32) * F32(1.0 / 255.0), -1, 0))


def _pile(
    img: npt.NDArray[np.float32], cutout: _Cutout, plan: _Plan, size: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], float]:
    """Copies of the product heaped over the lower part of ``img`` (in place), back rows first.

    Each copy has its own size (+-15%), turn and flip; together they cover the frame from a drawn top
    edge down, and the scene shows above and in the gaps. Returns the expected mask (every copy's
    visible pixels), the colour gain matched to the scene (the same for every copy) and the copies'
    mean height / canvas side.
    """
    item = float(np.clip(0.26 * plan.framing, 0.18, 0.34))  # a copy's longer side / canvas side
    top = float(rng.uniform(0.15, 0.4))
    w, h = cutout.rgba.size
    longer = max(w, h)
    item_w, item_h = item * w / longer, item * h / longer
    # Rows and columns overlap a little: a heap, not a grid of separate items.
    rows = max(2, math.ceil((1.0 - top) / (0.62 * max(item_h, 0.5 * item))))
    cols = max(2, math.ceil(1.0 / (0.72 * max(item_w, 0.5 * item))))
    spots = [
        (
            (c + 0.5 + (0.5 if r % 2 else 0.0) + float(rng.uniform(-0.2, 0.2))) / cols,
            top + (r + 0.5 + float(rng.uniform(-0.15, 0.15))) * (1.0 - top) / rows,
        )
        for r in range(rows)
        for c in range(cols + (r % 2 == 0))
    ]
    visible = np.zeros(img.shape[1:], dtype=F32)
    gain: npt.NDArray[np.float32] | None = None
    applied = np.ones(3, dtype=F32)
    heights: list[float] = []
    for cx, cy in spots:
        copy = _Plan(
            **{
                **plan.__dict__,
                "height_fraction": float(item_h * rng.uniform(0.85, 1.15)),
                "rotation_deg": float(rng.uniform(-180.0, 180.0)),
                "perspective_x": 0.0,
                "perspective_y": 0.0,
            }
        )
        flipped = cutout.rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else None
        source = _Cutout(flipped, cutout.framing) if flipped is not None else cutout
        try:
            layer, _, height_fraction = _place_product(source, copy, size, centre=(cx * size, cy * size))
        except CompositeError:
            # One copy shrunk below a pixel (a thin product, drawn small): left out of the heap. It failed
            # the whole variant, with a message about a height_fraction piles never use.
            continue
        heights.append(height_fraction)
        if gain is None:
            gain, applied = _match_to_scene(layer, img, plan.scene_match)
        else:
            _apply_gain(layer, gain)
        composite_layer(img, layer)
        lh, lw = layer.alpha.shape
        region = visible[layer.y0 : layer.y0 + lh, layer.x0 : layer.x0 + lw]
        region += (1.0 - region) * layer.alpha
    if gain is None:
        raise CompositeError(
            f"no copy of the product covers a pixel by half or more in a pile at {size} px: it is too thin "
            "to heap (check the reference mask, or use a single arrangement)"
        )
    return np.where(visible >= 0.5, 255, 0).astype(np.uint8), applied, float(np.mean(heights))


def _apply_gain(product: Layer, gain: npt.NDArray[np.float32]) -> None:
    product.premul[...] = np.minimum(product.premul * gain.astype(F32)[:, None, None], product.alpha)


def _match_to_scene(
    product: Layer, img: npt.NDArray[np.float32], strength: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Move the product's white balance and brightness part of the way to the scene's (in place).

    Returns the per-channel gain asked for and the gain the product's pixels got on average (ones when
    nothing was matched): a pixel is capped at white, so a bright product brightened got less than was
    asked. The second is the one to report: the gate applies the declared gain to the reference and
    caps once, and a white product matched by x1.2 and then lit by x0.8 was declared x0.96 but came
    out x0.8 (a colour drift of 6 of the gate's 20 from the generator itself).
    """
    unchanged = np.ones(3, dtype=F32)
    coverage = float(product.alpha.sum())
    if coverage < 1.0 or strength <= 0:
        return unchanged, unchanged
    product_rgb = product.premul.reshape(3, -1).sum(axis=1) / coverage
    scene_rgb = img.reshape(3, -1).mean(axis=1)
    product_grey, scene_grey = float(product_rgb.mean()), float(scene_rgb.mean())
    if product_grey < 1e-3 or scene_grey < 1e-3:
        return unchanged, unchanged
    # A saturated product (a channel near 0) still gets matched; the floor only keeps the ratio finite.
    balance = (scene_rgb / scene_grey) / (np.maximum(product_rgb, 0.02) / product_grey)
    gain = np.clip(balance, 0.75, 1.33) ** strength
    gain *= float(np.clip(scene_grey / product_grey, 0.7, 1.4)) ** (strength * 0.5)
    before = product.premul.reshape(3, -1).sum(axis=1, dtype=np.float64)
    _apply_gain(product, gain.astype(F32))
    after = product.premul.reshape(3, -1).sum(axis=1, dtype=np.float64)
    applied = np.where(before > 1e-6, after / np.maximum(before, 1e-6), gain)
    return gain.astype(F32), applied.astype(F32)


def _scene_occluder(
    scene: npt.NDArray[np.uint8], product: Layer, size: int, rng: np.random.Generator
) -> Layer:
    """A rounded piece of the scene in front of the product, hiding part of one lower corner."""
    rows, cols = np.nonzero(product.alpha >= 0.5)
    top, bottom = product.y0 + int(rows.min()), product.y0 + int(rows.max()) + 1
    left, right = product.x0 + int(cols.min()), product.x0 + int(cols.max()) + 1
    radius_y = (bottom - top) * float(rng.uniform(0.2, 0.35))
    radius_x = (right - left) * float(rng.uniform(0.25, 0.45))
    centre_x = right if rng.random() < 0.5 else left
    centre_y = bottom - (bottom - top) * float(rng.uniform(0.0, 0.15))
    x0, x1 = max(0, int(centre_x - radius_x)), min(size, int(centre_x + radius_x) + 1)
    y0, y1 = max(0, int(centre_y - radius_y)), min(size, int(centre_y + radius_y) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(F32) + F32(0.5)
    distance = np.sqrt(((xx - centre_x) / radius_x) ** 2 + ((yy - centre_y) / radius_y) ** 2)
    # One pixel of anti-aliased edge: the expected mask threshold (0.5) falls on the true outline.
    alpha = np.clip((1.0 - distance) * F32(min(radius_x, radius_y)) + F32(0.5), 0.0, 1.0).astype(F32)
    texture = _photo_backdrop(scene, size, 0.002 * size, rng)[:, y0:y1, x0:x1] * F32(0.85)
    return Layer(x0, y0, np.ascontiguousarray(texture * alpha), np.ascontiguousarray(alpha))


def _fit_scale(width_px: int, plan: _Plan, size: int) -> float:
    """The most a cut-out ``width_px`` wide is scaled by on a ``size`` px canvas: wide products still fit."""
    return 0.9 * size / (width_px * (1 + abs(plan.perspective_y)))


def _narrowed_to_fit(cutout: _Cutout, plan: _Plan, size: int) -> bool:
    """Whether ``plan`` places ``cutout`` narrowed to fit the frame (``_place_product``): its width, not
    ``height_fraction``, decides how tall it comes out."""
    w, h = cutout.rgba.size
    return plan.height_fraction * size / h >= _fit_scale(w, plan, size)


def _place_product(
    cutout: _Cutout,
    plan: _Plan,
    size: int,
    centre: tuple[float, float] | None = None,
    *,
    replayable: bool = False,
) -> tuple[Layer, npt.NDArray[np.float64], float]:
    """Warp the cut-out onto a size x size canvas; returns the layer, its four corners and the product's
    height / canvas side it came to (before rotation and keystone; less than ``plan.height_fraction``
    where a wide product had to be narrowed to fit). ``replayable``: the fraction before the shrink that
    extreme turns and keystones need, which, sent back as ``height_fraction``, draws the same image
    (asked for, the shrink's fraction is placed without pre-shrinking the same way, a few pixels apart).

    The product goes where ``plan.pos_x`` / ``pos_y`` say in the range that keeps it inside the frame,
    or as near ``centre`` (x, y in px) as that range allows.
    """
    w, h = cutout.rgba.size
    asked = plan.height_fraction * size / h
    k = min(asked, _fit_scale(w, plan, size))  # wide products still fit
    source = cutout.rgba
    if k < 0.75:
        # Pre-shrink with a filter: the perspective warp samples bilinearly and would alias.
        source = source.resize(
            (max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR, reducing_gap=2.0
        )
    sw, sh = source.size
    hw, hh = w * k / 2, h * k / 2
    px, py = plan.perspective_x, plan.perspective_y
    # Corners (top-left, top-right, bottom-right, bottom-left) centred on the origin, with keystone.
    quad = np.array(
        [
            [-hw * (1 - py), -hh * (1 - px)],
            [hw * (1 - py), -hh * (1 + px)],
            [hw * (1 + py), hh * (1 + px)],
            [-hw * (1 + py), hh * (1 - px)],
        ]
    )
    angle = math.radians(plan.rotation_deg)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    quad = quad @ rot.T
    margin = 0.02 * size
    lo, hi = margin - quad.min(axis=0), size - margin - quad.max(axis=0)
    height_fraction = plan.height_fraction if k == asked else _fraction_replaying(k, h, size)
    if np.any(lo > hi):  # only with extreme overrides: shrink about the centre until it fits
        scale = float(np.min((size - 2 * margin) / (quad.max(axis=0) - quad.min(axis=0))))
        quad *= scale
        height_fraction *= 1.0 if replayable else scale
        lo, hi = margin - quad.min(axis=0), size - margin - quad.max(axis=0)
    if centre is None:
        where = lo + (hi - lo) * np.array([plan.pos_x, plan.pos_y])
    else:
        where = np.clip(np.array(centre, dtype=np.float64), lo, hi)
    quad = quad + where
    source_corners = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], dtype=np.float64)
    # Warp only the quad's bounding box (a fifth of the canvas, typically), not the whole canvas.
    bx0, by0 = (max(0, math.floor(v) - 1) for v in quad.min(axis=0))
    bx1, by1 = (min(size, math.ceil(v) + 1) for v in quad.max(axis=0))
    coefficients = _perspective_coefficients(quad - (bx0, by0), source_corners)
    warped = source.transform(
        (bx1 - bx0, by1 - by0), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    box = warped.getbbox()
    rgba = np.asarray(warped.crop(box) if box is not None else warped, dtype=F32) * F32(1.0 / 255.0)
    if box is None or not (rgba[..., 3] >= 0.5).any():
        # Nothing would reach the expected mask (which is coverage >= 1/2): a mask of specks or hairs.
        # Vanished altogether, it was blamed on height_fraction, which no one had set (drawn, or on a
        # photo not used), so that raising it could not help.
        raise CompositeError(
            f"the product covers no pixel by half or more at {size} px: its mask is too thin or "
            "scattered to place (check the reference mask)"
        )
    x0, y0 = box[:2]
    premul = np.ascontiguousarray(np.moveaxis(rgba[..., :3], -1, 0))
    return Layer(bx0 + x0, by0 + y0, premul, np.ascontiguousarray(rgba[..., 3])), quad, height_fraction


def _fraction_replaying(k: float, h: int, size: int) -> float:
    """The height fraction of a product narrowed to scale ``k``: sent back, it asks for at least ``k``,
    so the same narrowing (``min``) gives exactly ``k`` again, and the same image; k * h / size alone
    may come back an ulp under it."""
    fraction = k * h / size
    while fraction * size / h < k:
        fraction = math.nextafter(fraction, math.inf)
    return fraction


def _perspective_coefficients(
    dst: npt.NDArray[np.float64], src: npt.NDArray[np.float64]
) -> tuple[float, ...]:
    """PIL's PERSPECTIVE data: the 8 coefficients mapping output points ``dst`` to input points ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows, dtype=np.float64), src.reshape(8))
    return tuple(float(c) for c in solution)


def _other_product(
    rng: np.random.Generator, height_px: float, base: tuple[float, float], frame: int
) -> Layer | None:
    """Another synthetic product standing at ``base`` (bottom centre), ``height_px`` tall, in ``frame``.

    Drawn from a fixed pool of rendered sprites, scaled to size: rendering a product is most of a
    composite's cost, and a pool of a few hundred views is variety enough for background products.
    """
    sprite = _sprite(int(rng.integers(_POOL_PRODUCTS)), int(rng.integers(_POOL_VIEWS)))
    scale = height_px / sprite.alpha.shape[0]
    h, w = max(1, round(sprite.alpha.shape[0] * scale)), max(1, round(sprite.alpha.shape[1] * scale))
    x0, y0 = round(base[0] - w / 2), round(base[1] - h)
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(frame, x0 + w), min(frame, y0 + h)
    if cx1 <= cx0 or cy1 <= cy0:
        return None

    def scaled(plane: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        big = Image.fromarray(plane, mode="F").resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(big, dtype=F32)[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]

    premul, alpha = np.stack([scaled(c) for c in sprite.premul]), scaled(sprite.alpha)
    # Shrinking widens the anti-aliased edge into a faint halo that would tint whatever lies near
    # it; steepen the edge back to about one pixel (colour = premul / alpha is kept).
    colour = premul / np.maximum(alpha, F32(1e-6))
    alpha = np.clip(alpha * F32(2.0) - F32(0.5), F32(0.0), F32(1.0))
    return Layer(cx0, cy0, colour * alpha, alpha)


_POOL_PRODUCTS, _POOL_VIEWS, _SPRITE_HEIGHT_PX = 48, 3, 128


@functools.lru_cache(maxsize=_POOL_PRODUCTS * _POOL_VIEWS)
def _sprite(product: int, view: int) -> Layer:
    """Product ``product`` of the pool seen from view ``view``, cropped to its silhouette (pure: cached)."""
    spec = make_product(1_000_000 + product, _OTHER_PRODUCTS_SEED)
    rng = np.random.default_rng([product, view])
    seen = View(
        height=_SPRITE_HEIGHT_PX,
        yaw=float(rng.uniform(-0.6, 0.6)),
        elevation=float(rng.uniform(0.05, 0.25)),
        light_az=float(rng.uniform(-0.75, 0.75)),
        wrinkle_seed=int(rng.integers(2**31)),
    )
    shape = build_shape(spec, seen)
    xmin, xmax, ymin, ymax = shape.extent
    w, h = math.ceil(xmax - xmin) + 4, math.ceil(ymax - ymin) + 4
    layer = render_layer(shape, (w / 2, h - 2.0), 0.0, 1.0, (w, h), ss=2)
    if layer is None:  # cannot happen: the frame is the shape's own extent
        raise AssertionError("sprite fell outside its frame")
    rows, cols = np.flatnonzero(layer.alpha.any(axis=1)), np.flatnonzero(layer.alpha.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return Layer(
        0,
        0,
        np.ascontiguousarray(layer.premul[:, r0:r1, c0:c1]),
        np.ascontiguousarray(layer.alpha[r0:r1, c0:c1]),
    )


def _others_behind(
    img: npt.NDArray[np.float32], stands: list[Stand], rng: np.random.Generator, size: int
) -> None:
    """Other products on the scene's stands (shelf planks, table), behind the product, dimmed."""
    half = (size + 1) // 2
    for stand in stands:
        items = []
        for _ in range(int(rng.integers(stand.count[0], stand.count[1] + 1))):
            base_y = stand.base_y - float(rng.uniform(0.0, stand.spread_y))
            items.append(
                (
                    base_y,
                    float(rng.uniform(-0.05, 1.05)) * size,
                    stand.height * float(rng.uniform(0.7, 1.1)),
                    float(rng.uniform(0.7, 0.95)),
                    int(rng.integers(2**31)),
                )
            )
        # Farther first; drawn at half size and scaled up, which also softens them like depth of field.
        for base_y, x, height, dim, item_seed in sorted(items):
            small = _other_product(np.random.default_rng(item_seed), height / 2, (x / 2, base_y / 2), half)
            if small is not None:
                composite_layer(img, upscale_layer(small, size), dim)


def _occluders(count: int, rng: np.random.Generator, product: Layer, size: int) -> list[Layer]:
    """Products standing in front of the product, each hiding a band along one of its sides."""
    half = (size + 1) // 2
    rows, cols = np.nonzero(product.alpha >= 0.5)
    left, right = product.x0 + float(cols.min()), product.x0 + float(cols.max()) + 1
    top, bottom = product.y0 + float(rows.min()), product.y0 + float(rows.max()) + 1
    height, width = bottom - top, right - left
    first_side = int(rng.integers(2))
    layers = []
    for index in range(count):
        occluder_h = height * float(rng.uniform(0.35, 0.7))
        # Alternate sides; the occluder's axis stands just inside the product's edge, so it hides
        # a band of that side, lower than the product, and leaves the rest (and the top) visible.
        side = 1 if (index + first_side) % 2 else -1
        edge = right if side > 0 else left
        x = edge - side * float(rng.uniform(0.02, 0.15)) * width
        base_y = min(size - 1.0, bottom + float(rng.uniform(0.0, 0.05)) * size)
        item_rng = np.random.default_rng(int(rng.integers(2**31)))
        small = _other_product(item_rng, occluder_h / 2, (x / 2, base_y / 2), half)
        if small is not None:
            layers.append(upscale_layer(small, size))
    return layers


def _shadow(img: npt.NDArray[np.float32], product: Layer, plan: _Plan, placement: Placement) -> None:
    """Darken the scene where the product's shadow falls (soft, so built at half size)."""
    size = placement.size
    half = (size + 1) // 2
    full = np.zeros((half * 2, half * 2), dtype=np.uint8)
    h, w = product.alpha.shape
    full[product.y0 : product.y0 + h, product.x0 : product.x0 + w] = np.round(product.alpha * 255)
    silhouette = Image.fromarray(full, mode="L").reduce(2)
    light = math.radians(plan.light_angle_deg)
    if plan.shadow == "cast":
        # Ground shadow: flattened towards the base line and sheared away from the light.
        squash, shear, base = 0.3, -math.cos(light) * 0.8, placement.base_y / 2
        data = (1.0, shear / squash, -shear * base / squash, 0.0, 1.0 / squash, base * (1.0 - 1.0 / squash))
    else:
        offset = 0.03 * half
        data = (1.0, 0.0, math.cos(light) * offset, 0.0, 1.0, -abs(math.sin(light)) * offset - offset)
    moved = silhouette.transform((half, half), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    blurred = moved.filter(ImageFilter.GaussianBlur(1.0 + 0.015 * (placement.base_y - placement.top_y)))
    shade = blurred.resize((half * 2, half * 2), Image.Resampling.BILINEAR).crop((0, 0, size, size))
    box = shade.getbbox()
    if box is None:
        return
    x0, y0, x1, y1 = box
    img[:, y0:y1, x0:x1] *= 1.0 - np.asarray(shade.crop(box), dtype=F32) * F32(plan.shadow_strength / 255.0)


def _light(
    img: npt.NDArray[np.float32], plan: _Plan, size: int, product_mask: npt.NDArray[np.uint8]
) -> npt.NDArray[np.float32]:
    """Scene light: overall gain, a brightness gradient along the light direction, colour temperature.

    It falls on the product too, so it returns the per-channel gain it gave the product's pixels
    (``product_mask``, 0/255) on average: part of the colour change the backend declares.
    """
    coords = (np.arange(size, dtype=F32) + 0.5) / size - 0.5
    light = math.radians(plan.light_angle_deg)
    ramp_x = coords * F32(math.cos(light) * plan.light_gradient)
    ramp_y = coords * F32(math.sin(light) * plan.light_gradient)
    field = (ramp_y[:, None] + ramp_x[None, :]) + F32(plan.light_gain)
    warm = plan.colour_temperature * 0.07
    tints = (1.0 + warm, 1.0, 1.0 - warm)
    for channel, tint in enumerate(tints):
        img[channel] *= field * F32(tint)
    on = product_mask >= 128
    brightness = float(field[on].mean(dtype=np.float64)) if on.any() else plan.light_gain
    return (np.array(tints, dtype=np.float64) * brightness).astype(F32)


# The knobs a request's ``parameters`` may set for this backend (and the colour gain it reports).
COMPOSITE_PARAMETERS: frozenset[str] = frozenset(_Plan.__dataclass_fields__) | {COLOUR_GAIN_KEY}


def _knob_value(key: str, value: Any, kind: type) -> Any:
    """``value`` as a knob of type ``kind`` wants it, or ``CompositeError``. Nothing is rounded or
    parsed: ``int(value)`` turned occluders 2.9 into 2 and scene_seed "7" into 7, and kept a bool, so a
    request got another image than it asked for without a word."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int and number and (isinstance(value, int) or value.is_integer()):
        return int(value)
    if kind is float and number:
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise CompositeError(f"composite parameter {key}={value!r} is not a {kind.__name__}")


def _with_implied_scene(parameters: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` with the scene a photo's key implies: ``{"scene_key": "shelves/a.jpg"}`` asks for
    that photo. Before, it was used only where a variant happened to draw a photo scene, and reported
    as the scene of the others (and, without a library, of all of them) though none was used."""
    if parameters.get("scene_key") and "scene" not in parameters:
        return {**parameters, "scene": PHOTO_SCENE}
    return parameters


def check_parameters(
    parameters: dict[str, Any], *, scene_library: bool = True, size_px: int | None = None
) -> None:
    """Raise ``CompositeError`` where ``parameters`` (this backend's knobs only) has a value every
    request would be refused for, as ``_Plan.override`` refuses it: for the settings, at start-up.
    With ``size_px`` (the canvas the stage asks for), a product under 2 px tall there too (``check_height``).
    The scene library is not open then: with ``scene_library`` (one is configured) a photo scene's key
    is taken to be in it (the request checks), an empty one not; without, a photo scene is refused as
    every request is."""
    asked = _with_implied_scene(parameters)
    # A stand-in holding the key asked for, or one to draw. It held "" too: {"scene": "photo",
    # "scene_key": ""} passed here, and then every composite variant was refused for its key.
    key = asked.get("scene_key")
    stand_in_key = key if isinstance(key, str) and key else "stand-in.jpg"
    pixels = np.zeros((1, 1, 3), np.uint8)
    stand_in = SceneLibrary([Scene(stand_in_key, "", pixels)]) if scene_library else None
    # Drawn as a request draws it (a photo asked for draws one); the light at the dim end of what a request
    # draws (light_gain from 0.8, a gradient up to 0.3), so that a value refused for some variants only
    # is refused here, not for a share of the SKUs at run time.
    share = 1.0 if asked.get("scene") == PHOTO_SCENE else 0.0
    drawn = _Plan.draw(np.random.default_rng(0), stand_in, share)
    dimmest = replace(drawn, light_gain=0.8, light_gradient=0.3)
    plan = dimmest.override(asked, stand_in)
    if size_px is not None and plan.scene != PHOTO_SCENE:
        check_height(plan.height_fraction, size_px)
