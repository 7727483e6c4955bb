"""Attribute captioner arithmetic, without Kafka: colour names, k-means, mask geometry, tokens, prompts."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw

from schemas.common import SkuMetadata
from shared.arith.colour import srgb_to_lab
from shared.arith.masks import convex_hull, largest_component
from shared.captioning.attributes import (
    SHAPE_FEATURES,
    classify_shape,
    colour_name,
    colour_spread,
    describe_product,
    dominant_colours,
    kmeans,
    light_gains,
    mask_hull_area,
    mask_problem,
    plain_background_share,
    polygon_area,
    shape_features,
    tilt_degrees,
    view_of,
)
from shared.captioning.fit_shape import CLASSES, evaluate, fit_tree
from shared.captioning.prompts import (
    class_noun,
    class_prompt,
    compose_caption,
    compose_tags,
    instance_token,
    merge_sentence,
    sku_prompts,
)
from shared.captioning.shape_model import SHAPE_TREE
from shared.synth import blank_photo, make_product, render_photo

U8 = npt.NDArray[np.uint8]


# --- colours -----------------------------------------------------------------------------------


def shaded_patch(rgb: tuple[int, int, int], height: int = 96, width: int = 64, *, darkest: float = 0.5) -> U8:
    """A cylinder-like patch: shading from ``darkest`` to 1.02 across, a specular streak, grain."""
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    shade = darkest + (1.02 - darkest) * np.clip(np.sin(np.pi * (0.15 + 0.8 * x)), 0.0, 1.0) ** 0.8
    lit = np.asarray(rgb, dtype=np.float32)[None, None, :] / 255.0 * shade[None, :, None]
    streak = 0.45 * np.exp(-(((x - 0.3) / 0.04) ** 2))[None, :, None]
    lit = lit + streak * (1.0 - lit)  # screen blend: highlights whiten without clipping
    grain = np.random.default_rng(0).uniform(-0.01, 0.01, (height, width, 1)).astype(np.float32)
    pixels = np.clip(np.broadcast_to(lit, (height, width, 3)) + grain, 0.0, 1.0)
    return np.round(pixels * 255.0).astype(np.uint8)


def full_mask(image: U8) -> U8:
    return np.full(image.shape[:2], 255, dtype=np.uint8)


@pytest.mark.parametrize(
    ("expected", "rgb"),
    [
        ("red", (190, 25, 30)),
        ("orange", (235, 125, 25)),
        ("yellow", (240, 200, 40)),
        ("green", (35, 140, 60)),
        ("blue", (30, 70, 180)),
        ("purple", (115, 45, 150)),
        ("pink", (235, 115, 165)),
        ("brown", (110, 65, 35)),
        ("white", (238, 238, 234)),
        ("grey", (128, 128, 130)),
        ("black", (28, 28, 30)),
    ],
)
def test_a_shaded_surface_is_named_by_its_ink(expected: str, rgb: tuple[int, int, int]) -> None:
    patch = shaded_patch(rgb)
    colours = dominant_colours(patch, full_mask(patch))
    assert colours[0].name == expected, [(c.name, c.share) for c in colours]
    assert colours[0].share >= 0.75


@pytest.mark.parametrize(
    ("name", "rgb", "expected"),
    [
        # CSS Color 4 names a shopper calls purple or pink; each was named "blue" when the purple
        # prototypes were only indigo and purple and blue had five shades.
        ("dark violet", (148, 0, 211), "purple"),
        ("blue violet", (138, 43, 226), "purple"),
        ("dark magenta", (139, 0, 139), "purple"),
        ("thistle", (216, 191, 216), "purple"),
        ("magenta", (255, 0, 255), "pink"),
        ("deep pink", (255, 20, 147), "pink"),
        # and the blues stay blue
        ("royal blue", (65, 105, 225), "blue"),
        ("slate blue", (106, 90, 205), "blue"),
        ("navy", (0, 0, 128), "blue"),
    ],
)
def test_purples_and_magentas_are_not_named_blue(name: str, rgb: tuple[int, int, int], expected: str) -> None:
    assert colour_name(rgb) == expected, name


def test_shaded_red_stays_red_not_brown_or_black() -> None:
    # The dark side of a red can is (95, 12, 15): on its own that pixel looks maroon or black.
    patch = shaded_patch((190, 25, 30), darkest=0.35)
    names = [c.name for c in dominant_colours(patch, full_mask(patch))]
    assert names[0] == "red"
    assert "brown" not in names and "black" not in names


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((250, 250, 248), "white"),
        ((200, 200, 200), "white"),
        ((150, 150, 152), "grey"),
        ((90, 90, 90), "grey"),
        ((40, 40, 42), "black"),
        ((10, 10, 10), "black"),
    ],
)
def test_white_grey_black_are_decided_by_lightness_when_chroma_is_low(
    rgb: tuple[int, int, int], expected: str
) -> None:
    assert colour_name(rgb) == expected


def test_shaded_white_stays_white_and_lit_grey_stays_grey() -> None:
    white = shaded_patch((240, 240, 236), darkest=0.55)
    grey = shaded_patch((132, 132, 135), darkest=0.55)
    assert dominant_colours(white, full_mask(white))[0].name == "white"
    assert dominant_colours(grey, full_mask(grey))[0].name == "grey"


# --- colours under shop light ------------------------------------------------------------------

# A shop's warm, dim light (linear RGB factors) and the neutral-on-average shelves around a product.
WARM_SHOP_LIGHT = (0.55, 0.42, 0.27)


def under_light(srgb: U8, light: tuple[float, float, float], *, glare: float = 0.0) -> U8:
    """``srgb`` as a camera sees it under ``light``: each linear channel scaled, sRGB again; ``glare``
    is the share of the light scattered evenly over the frame (a hazy lens), which pales every colour."""
    values = srgb.astype(np.float32) / 255.0
    linear = np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)
    lamp = np.asarray(light, dtype=np.float32)
    linear = np.clip(linear * lamp * (1.0 - glare) + lamp * glare, 0.0, 1.0)
    out = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.round(out * 255.0).astype(np.uint8)


def shop_scene(product: U8, shelves: list[tuple[int, int, int]]) -> tuple[U8, U8]:
    """``product`` held up in front of a wall of 24 px packages in ``shelves``' colours, and its mask."""
    rng = np.random.default_rng(7)
    scene = np.zeros((240, 240, 3), dtype=np.uint8)
    for top in range(0, 240, 24):
        for left in range(0, 240, 24):
            scene[top : top + 24, left : left + 24] = shelves[int(rng.integers(len(shelves)))]
    height, width = product.shape[:2]
    top, left = (240 - height) // 2, (240 - width) // 2
    scene[top : top + height, left : left + width] = product
    mask = np.zeros(scene.shape[:2], dtype=np.uint8)
    mask[top : top + height, left : left + width] = 255
    return scene, mask


# Shelves that are grey on average: white, grey and black packages, and colours that cancel out.
NEUTRAL_SHELVES = [
    (235, 235, 235),
    (128, 128, 128),
    (40, 40, 40),
    (200, 60, 50),
    (50, 170, 70),
    (60, 80, 200),
    (230, 200, 60),
    (90, 60, 170),
    (60, 190, 200),
    (220, 120, 200),
]


@pytest.mark.parametrize(
    ("expected", "rgb"),
    [("white", (238, 238, 234)), ("red", (190, 25, 30)), ("orange", (235, 125, 25)), ("blue", (30, 70, 180))],
)
def test_a_product_under_warm_dim_shop_light_keeps_its_colour(
    expected: str, rgb: tuple[int, int, int]
) -> None:
    # In a shop the light is warm and dim: a white carton read yellow or brown, an orange one brown.
    scene, mask = shop_scene(shaded_patch(rgb, height=120, width=80), NEUTRAL_SHELVES)
    photo = under_light(scene, WARM_SHOP_LIGHT)
    assert plain_background_share(Image.fromarray(photo), mask) < 0.7  # a cluttered, in-store backdrop
    assert dominant_colours(photo, mask)[0].name == expected
    assert describe_product(photo, mask).colour_names[0] == expected


# A warmer, dimmer lamp: its blue gain (1/0.18 against red's 1/0.6) is beyond what the correction
# undoes (``MAX_WHITE_BALANCE_GAIN``), so some warmth is left.
DIM_WARM_SHOP_LIGHT = (0.6, 0.4, 0.18)


# Known wrong, kept so a fix shows: counting lightness in full when naming (plain Lab distance) made
# this red read red and took Pink Lady apples from brown to red on train (hand masks 25 -> 26 of 28,
# U2-NetP 61 -> 63 of 76), but on val it lost 2 of 43 with hand masks (35 -> 33: dim yellows went to
# olive green, a yellow onion from brown to yellow), so it was not kept.
PALED_RED_READS_BROWN = pytest.mark.xfail(
    strict=True, reason="the dark brown prototype is nearest the paled red while lightness counts half"
)


@pytest.mark.parametrize(
    ("expected", "rgb"),
    [
        pytest.param("red", (205, 35, 40), marks=PALED_RED_READS_BROWN),
        ("brown", (120, 75, 40)),
        ("brown", (160, 110, 70)),
    ],
)
def test_a_red_product_paled_by_warm_hazy_shop_light_stays_red_and_browns_stay_brown(
    expected: str, rgb: tuple[int, int, int]
) -> None:
    # Pink Lady apples, red grapefruit read brown in store: left warm and paled, a red's lit colour
    # comes out lighter and duller (here the table's red measures ~(184, 114, 96), L* 55, C* 34), and
    # the dark brown prototype (L* 36, C* 32) is nearer it than any red while lightness counts half.
    scene, mask = shop_scene(shaded_patch(rgb, height=120, width=80), NEUTRAL_SHELVES)
    photo = under_light(scene, DIM_WARM_SHOP_LIGHT, glare=0.25)
    assert plain_background_share(Image.fromarray(photo), mask) < 0.7  # a cluttered, in-store backdrop
    assert describe_product(photo, mask).colour_names[0] == expected


def test_the_light_is_measured_on_the_background_only() -> None:
    # A mask that fills the frame leaves no background to measure the light on: nothing is corrected.
    white = under_light(shaded_patch((238, 238, 234), height=120, width=80), WARM_SHOP_LIGHT)
    assert np.array_equal(light_gains(white, full_mask(white) > 0), np.ones(3))


def test_a_plain_coloured_backdrop_is_not_taken_for_the_light() -> None:
    # A studio sweep or catalogue backdrop has a colour of its own, not the light's.
    scene, mask = shop_scene(shaded_patch((128, 128, 130), height=120, width=80), [(240, 150, 60)])
    assert np.array_equal(light_gains(scene, mask > 0), np.ones(3))
    assert dominant_colours(scene, mask)[0].name == "grey"


def test_a_background_that_is_no_light_colour_is_left_alone() -> None:
    # Cluttered but magenta on average: no shop light is, so it is the products' colour, not a cast.
    shelves = [(200, 60, 200), (150, 40, 120), (230, 120, 220), (120, 60, 160)]
    scene, mask = shop_scene(shaded_patch((128, 128, 130), height=120, width=80), shelves)
    assert plain_background_share(Image.fromarray(scene), mask) < 0.7
    assert np.array_equal(light_gains(scene, mask > 0), np.ones(3))
    assert dominant_colours(scene, mask)[0].name == "grey"


def test_warm_light_gains_cool_the_photo_and_brighten_it() -> None:
    scene, mask = shop_scene(shaded_patch((238, 238, 234), height=120, width=80), NEUTRAL_SHELVES)
    gains = light_gains(under_light(scene, WARM_SHOP_LIGHT), mask > 0)
    assert gains[2] > gains[1] > gains[0] > 1.0  # blue raised most, and all raised: the shop is dim


def test_colours_are_ordered_by_share_and_only_the_masked_pixels_count() -> None:
    red = shaded_patch((190, 25, 30), height=70)
    white = shaded_patch((238, 238, 234), height=30)
    product = np.concatenate([red, white])  # 70 % red, 30 % white
    frame = np.zeros((140, 104, 3), dtype=np.uint8)
    frame[:] = (30, 70, 180)  # a blue backdrop the mask leaves out
    frame[20:120, 20:84] = product
    mask = np.zeros(frame.shape[:2], dtype=np.uint8)
    mask[20:120, 20:84] = 255
    colours = dominant_colours(frame, mask)
    assert [c.name for c in colours] == ["red", "white"]
    assert colours[0].share == pytest.approx(0.7, abs=0.08)
    assert dominant_colours(frame, np.zeros_like(mask)) == []


def test_renderer_photo_main_colour_comes_first_with_its_true_mask() -> None:
    # The main label colour of a few rendered products, through the exact mask (the session-mask
    # figures over 50+ products are in test_captioner_accuracy.py).
    hits = 0
    for index in range(15):
        spec = make_product(index, seed=2026)
        photo = render_photo(spec, 0, seed=2026, size_px=160)
        hits += dominant_colours(photo.image, photo.mask)[0].name == spec.main_colour
    assert hits >= 14


def test_srgb_to_lab_uint8_fast_path_matches_the_formula_and_known_values() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (500, 3), dtype=np.uint8)
    assert np.allclose(srgb_to_lab(pixels), srgb_to_lab(pixels.astype(np.float32)), atol=1e-3)
    white, black = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0]], dtype=np.uint8))
    assert white == pytest.approx([100.0, 0.0, 0.0], abs=0.05)
    assert black == pytest.approx([0.0, 0.0, 0.0], abs=0.05)


# --- k-means -----------------------------------------------------------------------------------


def test_kmeans_is_deterministic_and_finds_separated_clusters() -> None:
    rng = np.random.default_rng(7)
    truth = np.array([[20.0, 0.0, 0.0], [60.0, 40.0, -30.0], [90.0, -20.0, 50.0]])
    points = np.concatenate([centre + rng.normal(0.0, 2.0, (300, 3)) for centre in truth])
    centres_a, labels_a = kmeans(points, 3)
    centres_b, labels_b = kmeans(points.copy(), 3)
    assert np.array_equal(centres_a, centres_b) and np.array_equal(labels_a, labels_b)
    found = centres_a[np.argsort(centres_a[:, 0])]
    assert np.allclose(found, truth, atol=1.0)
    assert len(set(labels_a[:300])) == 1 and len(set(labels_a[300:600])) == 1


def test_kmeans_with_fewer_distinct_points_than_k_returns_fewer_centres() -> None:
    points = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, 5.0]] * 10)
    centres, labels = kmeans(points, 5)
    assert centres.shape == (2, 2)
    assert set(labels.tolist()) == {0, 1}
    with pytest.raises(ValueError):
        kmeans(np.zeros((0, 3)), 3)


# --- geometry ----------------------------------------------------------------------------------


def drawn_mask(polygon: list[tuple[float, float]], size: tuple[int, int] = (200, 200)) -> U8:
    image = Image.new("L", size, 0)
    ImageDraw.Draw(image).polygon(polygon, fill=255)
    return np.asarray(image)


def test_rectangle_features() -> None:
    mask = np.zeros((160, 120), dtype=np.uint8)
    mask[30:130, 35:85] = 255  # 100 tall, 50 wide
    features = shape_features(mask)
    assert set(features) == set(SHAPE_FEATURES)
    assert features["aspect"] == pytest.approx(0.5)
    assert features["extent"] == pytest.approx(1.0)
    assert features["solidity"] == pytest.approx(1.0)
    assert features["mirror_iou"] == pytest.approx(1.0)
    assert features["neck"] == pytest.approx(1.0)
    assert features["top_flatness"] == 1.0 and features["bottom_flatness"] == 1.0
    assert features["width_trend"] == pytest.approx(0.0)


def test_bottle_silhouette_has_a_neck_and_lower_solidity() -> None:
    mask = np.zeros((160, 120), dtype=np.uint8)
    mask[20:45, 52:68] = 255  # neck: 16 wide, the top quarter
    mask[45:120, 40:80] = 255  # body: 40 wide
    features = shape_features(mask)
    assert features["neck"] == pytest.approx(16 / 40, abs=0.02)
    assert features["width_08"] == pytest.approx(16 / 40, abs=0.02)
    # Hull: the 40x75 body plus a trapezoid from the 16-wide neck top down to the body, 25 tall.
    hull_area = 40 * 75 + (16 + 40) / 2 * 25
    assert features["solidity"] == pytest.approx((16 * 25 + 40 * 75) / hull_area, abs=1e-4)
    assert features["mirror_iou"] > 0.97


def test_l_shape_solidity_against_the_monotone_chain_hull() -> None:
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[10:50, 10:30] = 255
    mask[30:50, 30:50] = 255  # a 40x40 square missing its top-right quarter
    upright = mask > 0
    assert mask_hull_area(upright) == pytest.approx(1400.0)  # 1600 minus a 20x20 half-triangle
    assert shape_features(mask)["solidity"] == pytest.approx(1200 / 1400, abs=1e-6)


def test_convex_hull_and_polygon_area() -> None:
    inside = [(1.0, 1.0), (2.0, 3.0), (3.0, 2.0)]
    corners = [(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)]
    hull = convex_hull(inside + corners + [(2.0, 0.0)])  # a collinear point on an edge is dropped
    assert sorted(map(tuple, hull.tolist())) == sorted(corners)
    assert polygon_area(hull) == pytest.approx(16.0)
    assert polygon_area([(0, 0), (1, 0)]) == 0.0


def test_box_in_perspective_is_lopsided_and_called_an_angled_view() -> None:
    # Front face (30..115), the side face receding up to the right, the top face above both: the
    # silhouette is a hexagon that is point-symmetric but not mirror-symmetric.
    box = drawn_mask([(30, 70), (80, 45), (165, 45), (165, 160), (115, 185), (30, 185)])
    features = shape_features(box)
    assert features["mirror_iou"] < 0.93
    assert view_of(0.0, features["mirror_iou"]) == "angled view"
    front = drawn_mask([(50, 30), (150, 30), (150, 170), (50, 170)])
    assert view_of(0.0, shape_features(front)["mirror_iou"]) == "front view"


def test_tilt_is_measured_and_undone_before_the_features() -> None:
    image = Image.new("L", (240, 240), 0)
    ImageDraw.Draw(image).rectangle((95, 60, 145, 180), fill=255)  # 50 wide, 120 tall
    tilted = np.asarray(image.rotate(-20, resample=Image.Resampling.BILINEAR)) >= 128
    assert tilt_degrees(tilted) == pytest.approx(20.0, abs=1.5)
    features = shape_features(tilted)
    assert features["aspect"] == pytest.approx(50 / 120, abs=0.04)
    assert features["extent"] > 0.95
    assert view_of(tilt_degrees(tilted), features["mirror_iou"]) == "tilted front view"


def test_largest_component_keeps_the_biggest_blob_only() -> None:
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[5:10, 5:10] = 255
    mask[20:45, 20:40] = 255
    blob = largest_component(mask)
    assert blob.sum() == 25 * 20 and not blob[5:10, 5:10].any()
    with pytest.raises(ValueError, match="empty"):
        shape_features(np.zeros((10, 10), dtype=np.uint8))


def test_classify_shape_walks_the_tree_and_answers_other_when_unsure() -> None:
    tree = {
        "classes": ["can", "bottle"],
        "min_confidence": 0.7,
        "nodes": [
            {"feature": "neck", "threshold": 0.6, "left": 1, "right": 2},
            {"counts": [1, 9]},
            {"counts": [6, 4]},
        ],
    }
    package = {"extent": 0.95, "bottom_flatness": 1.0, "aspect": 0.5}  # the produce rule reads these first
    assert classify_shape({**package, "neck": 0.3}, tree).shape == "bottle"
    unsure = classify_shape({**package, "neck": 0.9}, tree)
    assert unsure.shape == "other" and unsure.confidence == pytest.approx(0.6)
    assert unsure.probabilities == {"can": 0.6, "bottle": 0.4}


def test_committed_tree_reads_only_known_features() -> None:
    assert SHAPE_TREE["classes"] == list(CLASSES)
    used = {node["feature"] for node in SHAPE_TREE["nodes"] if "feature" in node}
    assert used and used <= set(SHAPE_FEATURES)


def test_cart_fit_separates_a_toy_problem() -> None:
    rng = np.random.default_rng(3)
    features = rng.uniform(0.0, 1.0, (200, len(SHAPE_FEATURES)))
    features[:, SHAPE_FEATURES.index("extent")] = 0.95  # packages all: the produce rule stays out of it
    labels = (features[:, SHAPE_FEATURES.index("neck")] > 0.5).astype(np.intp)  # class 0 "can", 1 "bottle"
    nodes = fit_tree(features, labels, max_depth=3, min_leaf=2, n_classes=len(CLASSES))
    assert nodes[0]["feature"] == "neck" and nodes[0]["threshold"] == pytest.approx(0.5, abs=0.02)
    tree = {"classes": list(CLASSES), "min_confidence": 0.5, "nodes": nodes}
    accuracy, confusion = evaluate(tree, features, labels)
    assert accuracy == 1.0 and sum(map(sum, confusion)) == 200


def test_describe_product_on_a_rendered_photo() -> None:
    spec = make_product(0, seed=2026)
    photo = render_photo(spec, 0, seed=2026, size_px=192)
    first = describe_product(photo.image, photo.mask)
    again = describe_product(photo.image, photo.mask)
    assert first == again  # deterministic
    assert first.colour_names[0] == spec.main_colour
    assert first.shape.shape == spec.shape
    assert first.mask_fraction == pytest.approx(photo.mask.mean() / 255, abs=1e-4)


def test_a_large_photo_is_measured_like_its_smaller_copy() -> None:
    spec = make_product(3, seed=2026)
    photo = render_photo(spec, 0, seed=2026, size_px=256)
    big_image = photo.image.resize((1280, 1280), Image.Resampling.NEAREST)
    big_mask = np.asarray(Image.fromarray(photo.mask).resize((1280, 1280), Image.Resampling.NEAREST))
    small, big = describe_product(photo.image, photo.mask), describe_product(big_image, big_mask)
    assert big.colour_names[0] == small.colour_names[0] == spec.main_colour
    assert big.shape.shape == small.shape.shape == spec.shape
    assert big.mask_fraction == pytest.approx(small.mask_fraction, abs=1e-3)
    with pytest.raises(ValueError, match="mask is"):
        describe_product(photo.image, big_mask)


# --- photos with no product --------------------------------------------------------------------


def test_blank_photos_have_no_colour_spread_and_rendered_ones_do() -> None:
    assert colour_spread(blank_photo(256, "white")) < 1.0
    assert colour_spread(blank_photo(64, (200, 30, 30))) < 1.0
    assert colour_spread(render_photo(make_product(1, seed=2026), 0, seed=2026, size_px=128).image) > 10.0


def test_a_small_product_on_a_plain_backdrop_is_not_a_blank_photo() -> None:
    """A product on 0.5-1% of the photo passes the captioner's product check (0.5%), but fell in the
    1% tail the colour spread cut: the photo was refused as one flat colour. A blank photo with a few
    specks of dust stays blank."""
    product = render_photo(make_product(3, seed=2026), 0, seed=2026, size_px=64).image.resize((48, 48))
    for side in (512, 640):  # the product on 0.88% and 0.56% of the photo
        photo = blank_photo(side, "white")
        photo.paste(product, (side // 2, side // 3))
        assert colour_spread(photo) > 10.0
    dusty = blank_photo(512, "white")
    for x, y in ((40, 40), (300, 120), (451, 470)):
        dusty.putpixel((x, y), (20, 20, 20))
    assert colour_spread(dusty) < 3.0


def test_mask_problem_thresholds() -> None:
    mask = np.zeros((100, 100), dtype=np.uint8)
    assert mask_problem(mask, min_fraction=0.01, max_fraction=0.95) == "no_product_found"
    mask[:50] = 255
    assert mask_problem(mask, min_fraction=0.01, max_fraction=0.95) is None
    mask[:] = 255
    assert mask_problem(mask, min_fraction=0.01, max_fraction=0.95) == "mask_full_frame"


def test_an_empty_mask_is_no_product_even_with_the_minimum_set_to_zero() -> None:
    """SKUFORGE_CAPTIONER_MIN_MASK_FRACTION=0 allows any product, however small; an empty mask passed as
    "usable", and the real photo was stored with a mask marking nothing (as the gate refuses it)."""
    mask = np.zeros((100, 100), dtype=np.uint8)
    assert mask_problem(mask, min_fraction=0.0, max_fraction=0.95) == "no_product_found"
    mask[50, 50] = 255
    assert mask_problem(mask, min_fraction=0.0, max_fraction=0.95) is None


# --- tokens and prompts ------------------------------------------------------------------------


def test_instance_token_is_stable_rare_looking_and_unique_over_10000_ids() -> None:
    assert instance_token("SYN-7-0001") == "umisgzbljmorny"  # fixed forever: LoRA adapters depend on it
    assert instance_token("SKU-00042") == "gkqirpajykylmi"
    ids = [f"SKU-{index:05d}" for index in range(5000)] + [
        f"SYN-{index % 7}-{index:04d}" for index in range(5000)
    ]
    tokens = [instance_token(sku_id) for sku_id in ids]
    assert len(set(ids)) == 10_000
    assert len(set(tokens)) == 10_000
    assert all(re.fullmatch(r"[a-z]{14}", token) for token in tokens)


def test_sku_prompts() -> None:
    sku = SkuMetadata(sku_id="SYN-7-0001", name="Fizzo Zero Cherry", category="Soda Can", brand="Fizzo")
    prompts = sku_prompts(sku)
    assert prompts.instance_token == "umisgzbljmorny"
    assert prompts.class_noun == "soda can"
    assert prompts.instance_prompt == "a photo of umisgzbljmorny soda can"
    assert prompts.class_prompt == "a photo of a soda can"
    assert "blurry" in prompts.negative_prompt
    energy = sku_prompts(sku.model_copy(update={"category": "energy drink can"}))
    assert energy.class_prompt == "a photo of an energy drink can"


@pytest.mark.parametrize(
    ("category", "noun"),
    [
        ("soda can", "soda can"),
        ("  The Jam-Jar! ", "jam-jar"),
        ("A Cereal   Box", "cereal box"),
        ("!!", "product"),
    ],
)
def test_class_noun_keeps_the_category_noun_phrase(category: str, noun: str) -> None:
    assert class_noun(category) == noun


@pytest.mark.parametrize(
    ("category", "noun"),
    [
        ("Crème fraîche", "creme fraiche"),
        ("jalapeño peppers", "jalapeno peppers"),
        ("Açaí bowl", "acai bowl"),  # not "a bowl": a letter is not an article
        ("Weißbier", "weissbier"),
        ("日本茶", "product"),  # nothing spelled in plain letters: the fallback
        ("Молоко 3,2%", "product"),  # only the digits would be left: "a photo of a 3 2"
        ("3,2% milk", "3 2 milk"),
    ],
)
def test_class_noun_spells_accented_letters_plainly_instead_of_cutting_words(
    category: str, noun: str
) -> None:
    assert class_noun(category) == noun
    prompts = sku_prompts(SkuMetadata(sku_id="SKU-1", name="x", category=category))
    assert prompts.class_prompt == class_prompt(noun)


@pytest.mark.parametrize(
    ("category", "noun"),
    [
        ("Men's deodorant", "mens deodorant"),
        ("Children\u2019s toothpaste", "childrens toothpaste"),  # a typographic apostrophe, as pasted
        ("'Premium' coffee", "premium coffee"),  # quotes around a word are not inside it
    ],
)
def test_a_possessive_category_keeps_its_word_whole(category: str, noun: str) -> None:
    # It read "men s deodorant": every caption and class prompt of the SKU said "a photo of a men s ...".
    assert class_noun(category) == noun
    prompts = sku_prompts(SkuMetadata(sku_id="SKU-1", name="x", category=category))
    assert prompts.class_prompt == f"a photo of a {noun}"


@pytest.mark.parametrize(
    ("category", "prior_prompt", "caption"),
    [
        ("Soft drinks", "a photo of soft drinks", "a photo of red soft drinks by Fizzo"),
        ("jalapeño peppers", "a photo of jalapeno peppers", "a photo of red jalapeno peppers by Fizzo"),
        ("energy drink can", "a photo of an energy drink can", "a photo of a red energy drink can by Fizzo"),
        # -ss, -us and -is end one thing, not several.
        ("Hummus", "a photo of a hummus", "a photo of a red hummus by Fizzo"),
        ("wine glass", "a photo of a wine glass", "a photo of a red wine glass by Fizzo"),
    ],
)
def test_a_plural_category_takes_no_article(category: str, prior_prompt: str, caption: str) -> None:
    # Retailers' categories are often plural: every prompt of such a SKU read "a photo of a soft drinks".
    sku = SkuMetadata(sku_id="SKU-1", name="Fizzo Cola", category=category, brand="Fizzo")
    assert sku_prompts(sku).class_prompt == prior_prompt
    assert compose_caption(sku, ["red"], "other", "").startswith(f"{caption}, Fizzo Cola")


@pytest.mark.parametrize(
    ("category", "prior_prompt"),
    [
        ("unicorn-shaped cake", "a photo of a unicorn-shaped cake"),
        ("one-litre bottle", "a photo of a one-litre bottle"),
        ("European cheese", "a photo of a european cheese"),
        ("eucalyptus honey", "a photo of a eucalyptus honey"),
        ("UHT milk", "a photo of a uht milk"),
        ("SD card", "a photo of an sd card"),
        ("8-pack", "a photo of an 8-pack"),
        # A single letter before a hyphen is said by its name ("an x-ray", "an e-reader", "a t-shirt").
        ("x-ray film", "a photo of an x-ray film"),
        ("e-reader", "a photo of an e-reader"),
        ("t-shirt", "a photo of a t-shirt"),
        ("u-bend pipe", "a photo of a u-bend pipe"),
        # The letter rule still holds where it is right.
        ("unsweetened yoghurt", "a photo of an unsweetened yoghurt"),
        ("honey", "a photo of a honey"),
        ("oat milk", "a photo of an oat milk"),
    ],
)
def test_the_article_goes_by_the_first_sound_not_the_first_letter(category: str, prior_prompt: str) -> None:
    # It read "a photo of an unicorn-shaped cake", "an one-litre bottle", "an uht milk", "a sd card".
    sku = SkuMetadata(sku_id="SKU-1", name="x", category=category)
    assert sku_prompts(sku).class_prompt == prior_prompt
    assert compose_caption(sku, [], "other", "").startswith(prior_prompt)


def test_a_vlm_sentence_keeps_its_right_articles() -> None:
    # The articles a merge rewrites followed the first letter: "an unicorn-shaped cake beside a hourglass".
    merged = merge_sentence(
        "c", "a unicorn-shaped cake beside an hourglass and a one-litre box", ["white"], "box"
    )
    assert merged == "c, a unicorn-shaped cake beside an hourglass and a one-litre box"


def test_caption_and_tags_say_what_was_measured() -> None:
    sku = SkuMetadata(
        sku_id="SYN-7-0001", name="Fizzo Zero Cherry", category="soda can", brand="Fizzo", series="Fizzo Zero"
    )
    caption = compose_caption(sku, ["red", "white"], "can", "front view")
    assert caption == (
        "a photo of a red and white soda can by Fizzo, Fizzo Zero Cherry, Fizzo Zero series, "
        "cylindrical can, front view"
    )
    assert compose_caption(sku, [], "other", "").startswith("a photo of a soda can by Fizzo")
    tags = compose_tags(sku, ["red", "white"], "can", "front view")
    assert tags[:4] == ["red", "white", "red can", "can"]
    assert {"soda can", "fizzo", "fizzo zero", "front view"} <= set(tags)
    assert all(tag == tag.lower() and "," not in tag for tag in tags)
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize(
    ("brand", "series", "caption"),
    [
        # A brand or series of spaces read "by  , Fizzo Cola,   series".
        (" ", " ", "a photo of a red soda can, Fizzo Cola, cylindrical can"),
        (
            "Fizzo ",
            "  Zero  Sugar ",
            "a photo of a red soda can by Fizzo, Fizzo Cola, Zero Sugar series, cylindrical can",
        ),
        # A series named so itself read "Pro Series series".
        (
            "Fizzo",
            "Pro Series",
            "a photo of a red soda can by Fizzo, Fizzo Cola, Pro Series, cylindrical can",
        ),
    ],
)
def test_blank_metadata_says_nothing_and_a_series_is_named_once(
    brand: str, series: str, caption: str
) -> None:
    sku = SkuMetadata(sku_id="SKU-1", name="Fizzo Cola", category="soda can", brand=brand, series=series)
    assert compose_caption(sku, ["red"], "can", "") == caption


def test_a_vlm_sentence_cannot_overrule_measured_colours_or_shape() -> None:
    caption = "a photo of a red soda can by Fizzo"
    merged = merge_sentence(caption, "a blue bottle on a wooden shelf", ["red"], "can")
    assert merged == "a photo of a red soda can by Fizzo, a can on a wooden shelf"
    assert merge_sentence(caption, "an orange box", ["red"], "can").endswith(", a can")
    assert merge_sentence(caption, "a jar", ["red"], "other").endswith(", a product")
    assert merge_sentence(caption, "a red can next to a glass", ["red"], "can").endswith(
        ", a red can next to a glass"
    )
    assert merge_sentence(caption, "a photo of a blue", ["red"], "can") == caption


@pytest.mark.parametrize(
    ("sentence", "shape", "merged"),
    [
        ("a blue can beside an x-ray of a hand", "can", "a can beside an x-ray of a hand"),
        ("a jar next to a u-turn sign", "bottle", "a bottle next to a u-turn sign"),
        ("an apple and a blue box", "can", "an apple and a can"),
    ],
)
def test_a_vlm_sentence_keeps_the_articles_of_words_it_did_not_lose(
    sentence: str, shape: str, merged: str
) -> None:
    # Every "a"/"an" was redone by ``article``, which misses cases: "an x-ray" became "a x-ray" and "a
    # u-turn" "an u-turn" though no word beside them was dropped or replaced.
    assert merge_sentence("C", sentence, ["red"], shape) == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "colours", "merged"),
    [
        # Hyphenated colours passed as one word the filter did not know: "white" measured, the
        # caption said "a blue-and-white box", "a dark-red box".
        ("a blue-and-white box", ["white"], "a white box"),
        ("a dark-red box on a navy-blue shelf", ["white"], "a dark box on a shelf"),
        ("a red-white box", ["white"], "a white box"),
        # BLIP's decoder spaces a hyphen out: "blue - and - white" lost "blue" and kept "- and -".
        ("a blue - and - white box", ["white"], "a white box"),
        # Measured colours keep their hyphens, and words that only contain a colour are not colours.
        ("a red-and-white box", ["red", "white"], "a red-and-white box"),
        ("a box of blue-berries", ["white"], "a box of blue-berries"),
    ],
)
def test_a_vlm_sentence_cannot_name_an_unmeasured_colour_in_a_hyphenated_word(
    sentence: str, colours: list[str], merged: str
) -> None:
    assert merge_sentence("C", sentence, colours, "box") == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "shape", "merged"),
    [
        # Packaging words the category reader knows ("tins of tomatoes" is a can) passed untouched
        # here: a box's caption went on "two tins of beans", a jar's "a carton of yoghurt".
        ("two tins of beans", "box", "two boxes of beans"),
        ("a carton of yoghurt", "jar", "a jar of yoghurt"),
        ("a tub of ice cream", "box", "a box of ice cream"),
        ("three cartons on a shelf", "can", "three cans on a shelf"),
        ("a packet of crisps", "bottle", "a bottle of crisps"),
        ("two bottles", "other", "two products"),
        ("pouches of rice", "produce", "rice"),
        # A packaging word before a tool is no packaging ("can opener": ``declared_shape``).
        ("a bottle opener on a table", "other", "a bottle opener on a table"),
    ],
)
def test_a_vlm_sentence_cannot_name_other_packaging_in_any_of_its_words(
    sentence: str, shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, ["red"], shape) == f"C, {merged}"


def test_plain_background_share_tells_a_catalogue_photo_from_a_cluttered_one() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((200, 160), dtype=np.uint8)
    mask[40:160, 50:110] = 255
    product = np.zeros((200, 160, 3), dtype=np.uint8)
    product[40:160, 50:110] = (200, 30, 30)
    catalogue = np.where(mask[..., None] > 0, product, np.uint8(245))
    clutter = rng.integers(0, 256, (200, 160, 3), dtype=np.uint8)
    in_store = np.where(mask[..., None] > 0, product, clutter)
    assert plain_background_share(Image.fromarray(catalogue), mask) > 0.95
    assert plain_background_share(Image.fromarray(in_store), mask) < 0.2
    # A product filling the frame leaves no background to judge: not plain.
    assert plain_background_share(Image.fromarray(catalogue), np.full((200, 160), 255, np.uint8)) == 0.0


def test_a_product_thinner_than_the_reduction_step_of_a_large_photo_is_still_measured() -> None:
    # A 2000 x 2 photo is measured at 1024 px: nearest-neighbour sampling of its mask misses a
    # one-pixel strip, which left nothing to measure and failed the whole SKU in the captioner.
    image = Image.new("RGB", (2000, 2), (200, 30, 30))
    mask = np.zeros((2, 2000), dtype=np.uint8)
    mask[1, 100:1900] = 255
    attributes = describe_product(image, mask)
    assert attributes.colour_names[0] == "red"
    assert attributes.mask_fraction == pytest.approx(0.45)


@pytest.mark.parametrize("length_px", [3, 40])
def test_a_slanted_line_of_a_mask_is_too_thin_to_measure_said_plainly(length_px: int) -> None:
    """The captioner files this as the photo's no_product_found detail; it read 'cannot convert
    float NaN to integer'."""
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = np.zeros((64, 64), dtype=np.uint8)
    for step in range(length_px):
        mask[10 + step, 10 + step] = 255
    with pytest.raises(ValueError) as refused:
        describe_product(image, mask)
    assert str(refused.value) == f"the mask is too thin to measure ({length_px} pixels)"
    # Two pixels wide at the same slant is a shape again.
    mask[11 : 10 + length_px, 10 : 9 + length_px] |= np.eye(length_px - 1, dtype=np.uint8) * np.uint8(255)
    assert describe_product(image, mask).mask_fraction == pytest.approx((2 * length_px - 1) / 64**2, abs=1e-6)


@pytest.mark.parametrize(
    ("sentence", "colours", "shape", "merged"),
    [
        # A colour word that is the thing itself stays: "cream" and "orange" were cut out everywhere.
        ("a container of sour cream on a table", ["white"], "jar", "a container of sour cream on a table"),
        ("a carton of ice cream", ["white", "blue"], "box", "a carton of ice cream"),
        ("an orange on a white table", ["yellow"], "produce", "an orange on a table"),
        ("a lemon and an orange", ["yellow"], "produce", "a lemon and an orange"),
        # Loose produce has no packaging: the word goes, not "a produce of oranges".
        ("a bag of oranges", ["orange"], "produce", "oranges"),
        # Colours said of a thing still go when not measured, with the "and" between them.
        ("a red and white box on a shelf", ["white"], "box", "a white box on a shelf"),
        ("an orange box", ["red"], "box", "a box"),
    ],
)
def test_colour_nouns_stay_and_produce_sheds_its_packaging_word(
    sentence: str, colours: list[str], shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, colours, shape) == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "colours", "noun", "merged"),
    [
        # A colour word that names what is in the pack stays: "a bottle of orange juice" of a red box
        # read "a box of juice", a green bottle's "red wine" plain "wine".
        ("a bottle of orange juice", ["red"], "", "a box of orange juice"),
        ("a bottle of red wine on a table", ["green"], "", "a box of red wine on a table"),
        ("a box of green tea", ["red"], "", "a box of green tea"),
        (
            "a bag of brown rice and a loaf of white bread",
            ["red"],
            "",
            "a box of brown rice and a loaf of white bread",
        ),
        # So does one the class noun has with the next word ("white asparagus"), wherever it stands.
        ("a jar of white asparagus", ["yellow"], "white asparagus", "a box of white asparagus"),
        # Said of the pack, it is a colour still, and goes when not measured.
        ("a black box of green tea", ["red"], "", "a box of green tea"),
        ("a white jar of asparagus", ["yellow"], "white asparagus", "a box of asparagus"),
    ],
)
def test_a_colour_word_that_names_a_food_or_drink_is_part_of_its_name(
    sentence: str, colours: list[str], noun: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, colours, "box", noun=noun) == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "colours", "shape", "merged"),
    [
        # A colour joined by "and" to one that names a drink names a kind too: "red" was dropped, and
        # a bottle of red and of white wine read "white wine bottles".
        ("red and white wine bottles", ["white"], "bottle", "red and white wine bottles"),
        ("a shelf of red or white wine", ["green"], "bottle", "a shelf of red or white wine"),
        # A noun shading the colour after it is one colour with it: "a lemon yellow box" of a red box
        # read "a lemon box", which says what is in it.
        ("a lemon yellow box on a table", ["red"], "box", "a box on a table"),
        ("a sky-blue can", ["red"], "can", "a can"),
        ("a lemon yellow box", ["yellow"], "box", "a lemon yellow box"),
        ("a lemon yellow", ["green"], "produce", "a lemon"),
    ],
)
def test_a_colour_is_read_whole_before_it_is_judged(
    sentence: str, colours: list[str], shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, colours, shape) == f"C, {merged}"


@pytest.mark.parametrize(
    "argv",
    [
        [],  # --out is required: the default replaced the committed tree
        ["--out", "/tmp/x.py", "--min-confidence", "nan"],  # wrote a module that could not be imported
        ["--out", "/tmp/x.py", "--products", "0"],  # wrote an empty tree
    ],
)
def test_fit_shape_refuses_what_would_replace_or_break_the_committed_tree(argv: list[str]) -> None:
    from shared.captioning import fit_shape

    with pytest.raises(SystemExit) as refused:
        fit_shape.main(argv)
    assert refused.value.code == 2


def test_fit_shape_checks_its_out_before_fitting_and_makes_a_missing_folder(tmp_path: Path) -> None:
    # An --out in a folder that did not exist fitted the whole tree, then died in a FileNotFoundError.
    from shared.captioning import fit_shape

    (tmp_path / "a-file").write_text("")
    for out in (tmp_path / "a-file" / "tree.py", tmp_path):  # under a file; a folder, not a file
        with pytest.raises(SystemExit) as refused:
            fit_shape.main(["--out", str(out)])
        assert refused.value.code == 2
    out = tmp_path / "new" / "folder" / "tree.py"
    tiny = ["--products", "8", "--eval-products", "0", "--cartons", "0", "--mask-source", "truth"]
    assert fit_shape.main([*tiny, "--min-leaf", "1", "--out", str(out)]) == 0
    assert "Tree sha256" in out.read_text()


@pytest.mark.parametrize(
    ("category", "noun", "prior_prompt"),
    [
        # Letters NFKD leaves whole were cut out: "a photo of an sm rrebr d", "a photo of a r cheese".
        ("Smørrebrød", "smorrebrod", "a photo of a smorrebrod"),
        ("Ærø cheese", "aero cheese", "a photo of an aero cheese"),
        ("Æbleskiver", "aebleskiver", "a photo of an aebleskiver"),
        ("Bœuf bourguignon", "boeuf bourguignon", "a photo of a boeuf bourguignon"),
        ("Masło", "maslo", "a photo of a maslo"),
        ("Þorramatur", "thorramatur", "a photo of a thorramatur"),
        ("Äppelmust", "appelmust", "a photo of an appelmust"),
    ],
)
def test_letters_without_an_accent_to_drop_are_spelled_plainly_too(
    category: str, noun: str, prior_prompt: str
) -> None:
    sku = SkuMetadata(sku_id="SKU-1", name="x", category=category)
    assert class_noun(category) == noun
    assert sku_prompts(sku).class_prompt == prior_prompt
    assert compose_caption(sku, [], "other", "").startswith(prior_prompt)


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_a_name_that_is_the_accented_category_is_not_said_twice_and_text_stays_composed(
    form: Literal["NFC", "NFD"],
) -> None:
    # "Crème Fraîche" is the class noun "creme fraiche" spelled by the retailer: it was said again
    # ("a photo of a white creme fraiche by Président, Crème Fraîche, ..."), while "Soda Can" of a soda
    # can was not. A name as macOS writes it (decomposed, NFD) reached captions and tags decomposed, so
    # "président" was two different tags.
    def spelled(text: str) -> str:
        return unicodedata.normalize(form, text)

    sku = SkuMetadata(
        sku_id="SKU-1",
        name=spelled("Crème Fraîche"),
        category=spelled("Crème fraîche"),
        brand=spelled("Président"),
        series=spelled("Crémerie"),
    )
    caption = compose_caption(sku, ["white"], "jar", "front view")
    assert caption == (
        "a photo of a white creme fraiche by Président, Crémerie series, wide jar with a lid, front view"
    )
    tags = compose_tags(sku, ["white"], "jar", "front view")
    assert {"président", "crémerie", "crème fraîche"} <= set(tags)
    assert all(tag == unicodedata.normalize("NFC", tag) for tag in tags)
    other = sku.model_copy(update={"name": spelled("Äppelmust Original")})
    assert ", Äppelmust Original," in compose_caption(other, ["white"], "jar", "")


@pytest.mark.parametrize(
    ("sentence", "merged"),
    [
        # Letters outside A-Z cut a VLM's words into pieces: "a bottle of cr me fra che", "ppelmust".
        ("a bottle of crème fraîche on a table", "a bottle of crème fraîche on a table"),
        ("a blue bottle of äppelmust", "a bottle of äppelmust"),
        # An article redone for an accented word goes by its sound: "an éclair", not "a éclair".
        ("a red éclair on a plate", "an éclair on a plate"),
    ],
)
def test_a_vlm_sentence_keeps_its_accented_words_whole(sentence: str, merged: str) -> None:
    assert merge_sentence("C", sentence, ["white"], "bottle") == f"C, {merged}"


def test_the_shop_light_correction_uses_the_captioners_plain_backdrop_cut_off() -> None:
    """The light is measured only on a cluttered background: the same cut-off as the captioner's, kept
    as a copy because a model library does not import another."""
    from shared.captioning.attributes import NEUTRAL_LIGHT_BELOW_PLAIN_BACKGROUND
    from shared.generation.backend import PLAIN_BACKGROUND_FROM

    assert NEUTRAL_LIGHT_BELOW_PLAIN_BACKGROUND == PLAIN_BACKGROUND_FROM
