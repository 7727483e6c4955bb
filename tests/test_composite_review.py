"""Composite backend review: the light's gain and gradient together must leave every corner lit; the
lens blur keeps the product on its expected mask; a scene_key asks for that photo, or is refused."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from schemas.events import ImageGenerated
from shared.arith.masks import erode
from shared.config import ConfigError, load_settings
from shared.generation.backend import GenerationRequest
from shared.generation.composite import MIN_LIGHT_LEVEL, CompositeBackend, CompositeError, _Plan
from shared.generation.scenes import Scene, SceneLibrary
from shared.generation.settings import GenerationSettings
from tests.support.generation import red_box_request


def test_dim_light_with_a_steep_gradient_is_refused_naming_both_knobs() -> None:
    # Each knob within its own range, together a negative light in the top-left corner: the product
    # came out black with a negative colour gain, and the event failed only after its PNGs were stored.
    dark_corner = red_box_request(
        light_gain=0.6, light_gradient=1.0, light_angle_deg=45.0, pos_x=0.0, pos_y=0.0, height_fraction=0.3
    )
    with pytest.raises(CompositeError, match=r"light_gain 0\.6 with light_gradient 1\b"):
        CompositeBackend().generate(dark_corner)
    # The stage's path: a refused row, no sample (so no PNG) to store.
    [outcome] = CompositeBackend().generate_many([dark_corner])
    assert isinstance(outcome, CompositeError)


def test_the_dimmest_light_allowed_still_lights_the_product() -> None:
    gradient = 0.77  # 0.6 - 0.77 * sqrt(0.5) = 0.055: just above the floor at the worst angle
    assert 0.6 - gradient * math.sqrt(0.5) >= MIN_LIGHT_LEVEL
    sample = CompositeBackend().generate(
        red_box_request(
            light_gain=0.6,
            light_gradient=gradient,
            light_angle_deg=45.0,
            pos_x=0.0,
            pos_y=0.0,
            height_fraction=0.3,
        )
    )[0]
    gain = tuple(sample.parameters["applied_colour_gain"])
    assert ImageGenerated._positive_gain(gain) == gain
    assert sample.image[sample.expected_mask > 0].max() > 0


def test_drawn_plans_never_come_near_the_light_floor() -> None:
    for seed in range(2000):
        plan = _Plan.draw(np.random.default_rng(seed))
        assert plan.light_gain - plan.light_gradient * math.sqrt(0.5) > 0.5
        assert plan.override({}) == plan


@pytest.mark.parametrize("size", [128, 129])
def test_a_blurred_product_stays_on_its_expected_mask_at_an_odd_size(size: int) -> None:
    # The blur reduced an odd canvas to (size + 1) / 2 and stretched that back over size px: the
    # product drifted up to a pixel up and left of its expected mask (0.7 px on average here).
    scenes = SceneLibrary([Scene("grey.png", "", np.full((200, 200, 3), 128, np.uint8))])
    reference = np.full((120, 80, 3), 128, np.uint8)
    reference[10:110, 10:70] = (255, 0, 255)
    mask = np.zeros((120, 80), np.uint8)
    mask[10:110, 10:70] = 255
    knobs = {"scene": "photo", "shadow": "none", "scene_match": 0.0, "occluders": 0, "light_gain": 1.0}
    knobs |= {"light_gradient": 0.0, "colour_temperature": 0.0, "noise_sigma": 0.0, "blur_px": 1.0}
    knobs |= {"pos_x": 1.0, "pos_y": 1.0}  # bottom right, where the drift was largest
    for seed in range(3):
        request = GenerationRequest(reference, mask, "", "", seed=seed, n=1, parameters=knobs, size=size)
        sample = CompositeBackend(scenes, 1.0).generate(request)[0]
        pixels = sample.image.astype(np.float64)
        # How magenta each pixel is: 0 on the grey scene, 1 on the product, between on its blurred edge.
        magenta = np.clip((pixels[..., 0] + pixels[..., 2] - 2 * pixels[..., 1]) / 254.0, 0.0, 1.0)
        rows, cols = np.mgrid[0:size, 0:size]
        expected = sample.expected_mask > 0
        shift_x = (magenta * cols).sum() / magenta.sum() - cols[expected].mean()
        shift_y = (magenta * rows).sum() / magenta.sum() - rows[expected].mean()
        assert abs(shift_x) < 0.25 and abs(shift_y) < 0.25, (seed, shift_x, shift_y)


def test_a_scene_key_asks_for_that_photo_in_every_variant() -> None:
    # {"scene_key": ...} alone was used only where a variant drew a photo scene (photo_share of them);
    # the others were rendered on a shelf or a table and still reported the photo's key as their scene.
    scenes = SceneLibrary([Scene(key, "", np.full((80, 80, 3), 90, np.uint8)) for key in ("a.jpg", "b.jpg")])
    samples = CompositeBackend(scenes, 0.5).generate(replace(red_box_request(scene_key="a.jpg"), n=6))
    assert [(s.parameters["scene"], s.parameters["scene_key"]) for s in samples] == [("photo", "a.jpg")] * 6
    # A procedural scene cannot show a photo: refused, not reported as shown.
    with pytest.raises(CompositeError, match=r"scene_key 'a\.jpg' names a photo, but scene 'table'"):
        CompositeBackend(scenes, 0.5).generate(red_box_request(scene="table", scene_key="a.jpg"))


def test_a_scene_key_without_a_scene_library_is_refused_at_start_up_and_perred_box_request() -> None:
    # Without SKUFORGE_SCENES_URI the key was accepted, ignored in every variant, and reported.
    with pytest.raises(CompositeError, match="needs a scene library: set SKUFORGE_SCENES_URI"):
        CompositeBackend().generate(red_box_request(scene_key="shelves/a.jpg"))
    with pytest.raises(ConfigError, match="needs a scene library"):
        load_settings(GenerationSettings, generation_parameters={"scene_key": "shelves/a.jpg"})
    with_library = load_settings(
        GenerationSettings, generation_parameters={"scene_key": "shelves/a.jpg"}, scenes_uri="/scenes"
    )
    assert with_library.generation_parameters == {"scene_key": "shelves/a.jpg"}


def test_an_empty_scene_key_for_a_photo_scene_is_refused_at_start_up() -> None:
    # It passed the start-up check (the stand-in library held the key "" too), and then every composite
    # variant was refused at run time, every SKU dead-lettered one by one.
    parameters = {"scene": "photo", "scene_key": ""}
    with pytest.raises(ConfigError, match="scene_key is empty: name a photo"):
        load_settings(GenerationSettings, generation_parameters=parameters, scenes_uri="/scenes")
    scenes = SceneLibrary([Scene("a.jpg", "", np.full((80, 80, 3), 90, np.uint8))])
    with pytest.raises(CompositeError, match="scene_key is empty"):
        CompositeBackend(scenes, 1.0).generate(red_box_request(**parameters))
    # Asking for photo scenes without naming one still draws one, at start-up and per request.
    load_settings(GenerationSettings, generation_parameters={"scene": "photo"}, scenes_uri="/scenes")
    [sample] = CompositeBackend(scenes, 1.0).generate(red_box_request(scene="photo"))
    assert sample.parameters["scene_key"] == "a.jpg"


def test_a_product_too_thin_to_place_is_refused_as_such_not_for_a_height_no_one_set() -> None:
    # A stick 4 px wide in a 400 px photo shrinks below a pixel at 64 px. Where it vanished altogether
    # the refusal blamed height_fraction, which the request never set (and a photo scene never uses).
    reference, mask = np.full((400, 4, 3), 200, np.uint8), np.full((400, 4), 255, np.uint8)
    refusals = []
    for seed in range(4):
        request = GenerationRequest(reference, mask, "", "", seed=seed, n=1, parameters={}, size=64)
        [outcome] = CompositeBackend().generate_many([request])
        if isinstance(outcome, CompositeError):
            refusals.append(str(outcome))
    assert refusals, "expected at least one variant too thin to place"
    for refusal in refusals:
        assert "height_fraction" not in refusal and "too thin or scattered to place" in refusal


def test_a_pile_records_no_occluder_and_no_shadow_and_replays_from_what_it_records() -> None:
    # A pile draws neither, but reported the drawn occluders and shadow: the lineage record said
    # something was done to the image that was not.
    scenes = SceneLibrary([Scene("a.jpg", "", np.full((80, 80, 3), 90, np.uint8))])
    backend = CompositeBackend(scenes, 1.0)
    asked = red_box_request(scene="photo", arrangement="pile")
    [sample] = backend.generate(asked)
    assert (sample.parameters["occluders"], sample.parameters["shadow"]) == (0, "none")
    # What it records is what was done: sent back, the same image, byte for byte.
    [replayed] = backend.generate(replace(asked, seed=99, parameters=sample.parameters))
    assert np.array_equal(replayed.image, sample.image)
    assert np.array_equal(replayed.expected_mask, sample.expected_mask)


@pytest.mark.parametrize("blur_px", [0.0, 0.4, 1.0])
def test_a_product_lit_over_white_stays_white_under_noise_with_or_without_blur(blur_px: float) -> None:
    # A camera adds its noise to the light before the 8 bits clip it: a blown highlight is white. The
    # blur path clipped to 8 bits first and then added noise, so a white product lit x1.3 came out grainy
    # (half its pixels below 255) with blur and white without.
    reference = np.full((100, 60, 3), 128, np.uint8)
    reference[10:90, 10:50] = 255
    mask = np.zeros((100, 60), np.uint8)
    mask[10:90, 10:50] = 255
    knobs = {"scene": "studio", "shadow": "none", "occluders": 0, "light_gain": 1.3, "light_gradient": 0.0}
    knobs |= {"colour_temperature": 0.0, "noise_sigma": 0.02, "blur_px": blur_px}
    request = GenerationRequest(reference, mask, "", "", seed=3, n=1, parameters=knobs, size=128)
    [sample] = CompositeBackend().generate(request)
    inner = sample.image[erode(sample.expected_mask > 0, 4)]
    assert inner.size and (inner == 255).all(), (inner < 255).mean()


def test_a_negative_seed_is_a_seed_and_one_no_int64_holds_is_refused_in_this_backends_words() -> None:
    # A direct Triton client's seed is any int64, and the diffusion backend serves every one: -1 was
    # refused here (by numpy's "expected non-negative integer", then in words of its own).
    negative, positive = [
        CompositeBackend().generate(replace(red_box_request(), seed=seed))[0].image for seed in (-1, 1)
    ]
    assert not np.array_equal(negative, positive)
    with pytest.raises(ValueError, match=r"^seed must be from -2\^63 to 2\^63-1 \(an int64\), got -9"):
        CompositeBackend().generate(replace(red_box_request(), seed=-(2**63) - 1))


PILE_CANNOT = {
    "occluders": 2,
    "shadow": "cast",
    "shadow_strength": 0.5,
    "rotation_deg": 30,
    "perspective_x": 0.2,
    "perspective_y": -0.1,
    "pos_x": 0.1,
    "pos_y": 0.9,
}


@pytest.mark.parametrize(("key", "value"), PILE_CANNOT.items())
def test_a_placement_a_pile_cannot_honour_is_refused_here_and_at_start_up(key: str, value: object) -> None:
    # A pile places its copies itself: an asked cast shadow, turn or occluder was replaced by the pile's
    # own (none, 0) without a word, and the request got another image than it asked for.
    scenes = SceneLibrary([Scene("a.jpg", "", np.full((80, 80, 3), 90, np.uint8))])
    refusal = f"a pile places its copies itself and cannot honour {key}={value!r} "
    with pytest.raises(CompositeError, match=re.escape(refusal)):
        CompositeBackend(scenes, 1.0).generate(
            red_box_request(scene="photo", arrangement="pile", **{key: value})
        )
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        load_settings(GenerationSettings, generation_parameters={"arrangement": "pile", key: value})


def test_a_pile_records_only_the_placement_it_used_and_replays_from_it() -> None:
    # A pile places its copies itself (each its own turn, no keystone, spread over the frame) and sizes
    # them by framing alone: it records none of the drawn placement, and what it records replays.
    scenes = SceneLibrary([Scene("a.jpg", "", np.full((80, 80, 3), 90, np.uint8))])
    backend = CompositeBackend(scenes, 1.0)
    # reference_framing is measured for every request (the generator sends it): a pile does not use it.
    asked = red_box_request(scene="photo", arrangement="pile", reference_framing=0.5)
    [sample] = backend.generate(asked)
    recorded = {key: sample.parameters[key] for key in (*PILE_CANNOT, "reference_framing")}
    assert recorded == {
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
    # The pile's own values are accepted (a replay carries them) and change nothing.
    [drawn] = backend.generate(red_box_request(scene="photo", arrangement="pile"))
    [replayed] = backend.generate(replace(asked, seed=99, parameters=sample.parameters))
    for other in (drawn, replayed):
        assert np.array_equal(other.image, sample.image)
        assert np.array_equal(other.expected_mask, sample.expected_mask)
        assert other.parameters == sample.parameters
    # A single product on a photo still records (and uses) its own placement.
    placement = {**PILE_CANNOT, "occluders": 1, "shadow": "drop", "rotation_deg": 30.0}
    [single] = backend.generate(red_box_request(scene="photo", **placement))
    assert {key: single.parameters[key] for key in placement} == placement


def test_a_variant_without_a_shadow_records_no_shadow_strength_and_its_old_record_still_replays() -> None:
    # shadow "none" with shadow_strength 0.9 drew the image of 0.1 and recorded 0.9 (a drawn variant
    # without a shadow recorded its drawn strength too): the lineage named a shadow no pixel had.
    backend = CompositeBackend()
    strong, weak = (
        backend.generate(red_box_request(shadow="none", shadow_strength=s))[0] for s in (0.9, 0.1)
    )
    assert np.array_equal(strong.image, weak.image)
    assert strong.parameters["shadow_strength"] == weak.parameters["shadow_strength"] == 0.0
    # A record made before (shadow "none", a drawn strength) is not refused: it replays the same image.
    old_record = {**strong.parameters, "shadow_strength": 0.4}
    [replayed] = backend.generate(replace(red_box_request(), seed=99, parameters=old_record))
    assert np.array_equal(replayed.image, strong.image)
    assert replayed.parameters == strong.parameters
    # A variant with a shadow still records (and draws) the strength asked for.
    [drop] = backend.generate(red_box_request(shadow="drop", shadow_strength=0.9))
    assert drop.parameters["shadow_strength"] == 0.9
    assert not np.array_equal(drop.image, strong.image)
