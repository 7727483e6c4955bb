"""The captioner's words for real products: muted colours, loose produce, drink cartons, the real-photo
truth tables.

Small images drawn here; no dataset, no model, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast, get_args

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw

from schemas.common import SkuMetadata
from schemas.events import Shape
from shared.captioning.attributes import (
    SHAPE_NAMES,
    classify_shape,
    colour_name,
    describe_product,
    dominant_colours,
    looks_like_produce,
    shape_features,
)
from shared.captioning.evaluate import (
    PACKAGING_SHAPES,
    RealProduct,
    read_truth_table,
    real_accuracy,
)
from shared.captioning.fit_shape import Carton, carton_mask, carton_masks
from shared.captioning.prompts import compose_caption, compose_tags
from shared.matting.session import MattingResult, MattingSession
from shared.synth import make_product, render_photo

U8 = npt.NDArray[np.uint8]
TRUTH_TABLE = Path(__file__).resolve().parent.parent / "bench" / "data" / "captioner_real" / "truth.csv"
DEV_TABLE = TRUTH_TABLE.with_name("dev.csv")


# --- colours -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((156, 184, 199), "blue"),  # a grey-blue oat-milk carton, not brown
        ((13, 16, 160), "blue"),  # deep ultramarine print, not purple
        ((109, 125, 100), "green"),  # a cucumber under film, not brown
        ((141, 138, 51), "green"),  # olive asparagus, not brown
        ((163, 63, 60), "red"),  # a brick-red peach, not brown
        ((194, 178, 133), "yellow"),  # a cream vanilla carton, not brown
        ((126, 79, 38), "brown"),  # ginger stays brown
        ((77, 36, 12), "brown"),  # a brown-cap mushroom stays brown
        ((220, 100, 40), "orange"),  # a carrot stays orange
    ],
)
def test_muted_and_dark_colours_get_the_basic_name_a_shopper_uses(
    rgb: tuple[int, int, int], expected: str
) -> None:
    assert colour_name(rgb) == expected


def test_a_mostly_white_carton_with_a_blue_band_reads_white_then_blue() -> None:
    carton = np.full((120, 60, 3), 244, dtype=np.uint8)
    carton[80:110] = (20, 30, 150)
    colours = dominant_colours(carton, np.full(carton.shape[:2], 255, dtype=np.uint8))
    assert [c.name for c in colours][:2] == ["white", "blue"]


# --- loose produce -----------------------------------------------------------------------------


def drawn(shapes: Sequence[tuple[str, tuple[float, ...]]], size: tuple[int, int] = (200, 200)) -> U8:
    """A 0/255 mask of filled ellipses and polygons: ("ellipse", box) or ("polygon", flat points)."""
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    for kind, points in shapes:
        if kind == "ellipse":
            draw.ellipse(tuple(points), fill=255)
        else:
            draw.polygon(list(points), fill=255)
    return np.asarray(image)


Drawing = list[tuple[str, tuple[float, ...]]]
PRODUCE_MASKS: dict[str, Drawing] = {
    "apple": [("ellipse", (40, 45, 160, 165)), ("polygon", (98, 48, 102, 48, 104, 25, 100, 25))],
    "lemon": [("ellipse", (20, 60, 180, 140))],
    "three tomatoes": [
        ("ellipse", (20, 90, 100, 170)),
        ("ellipse", (95, 90, 175, 170)),
        ("ellipse", (55, 30, 135, 110)),
    ],
    "pear": [("ellipse", (50, 80, 150, 180)), ("ellipse", (75, 30, 125, 110))],
}
PACKAGE_MASKS: dict[str, Drawing] = {
    "brick carton": [("polygon", (60, 30, 140, 30, 140, 180, 60, 180))],
    "gable-top carton": [("polygon", (60, 50, 100, 20, 140, 50, 140, 185, 60, 185))],
    "bottle": [("polygon", (90, 15, 110, 15, 110, 50, 130, 70, 130, 185, 70, 185, 70, 70, 90, 50))],
    # Its base lost in the mask (another product in front): the neck still says bottle.
    "bottle, base cut": [("polygon", (90, 15, 110, 15, 110, 50, 130, 70, 130, 150, 70, 185, 70, 70, 90, 50))],
    "box corner-on": [("polygon", (30, 70, 80, 45, 165, 45, 165, 160, 115, 185, 30, 185))],
}


@pytest.mark.parametrize("name", sorted(PRODUCE_MASKS))
def test_round_or_irregular_silhouettes_without_a_flat_base_are_produce(name: str) -> None:
    features = shape_features(drawn(PRODUCE_MASKS[name]))
    assert looks_like_produce(features), features
    result = classify_shape(features)
    assert result.shape == "produce" and result.probabilities == {"produce": 1.0}


@pytest.mark.parametrize("name", sorted(PACKAGE_MASKS))
def test_packages_with_straight_sides_or_a_flat_base_are_not_produce(name: str) -> None:
    features = shape_features(drawn(PACKAGE_MASKS[name]))
    assert not looks_like_produce(features), features
    assert classify_shape(features).shape != "produce"


def test_an_orange_on_white_is_captioned_as_orange_loose_produce() -> None:
    photo = Image.new("RGB", (200, 200), (255, 255, 255))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((40, 40, 160, 160), fill=(240, 140, 30))
    draw.ellipse((95, 42, 105, 52), fill=(60, 110, 40))  # the stem scar
    mask = drawn([("ellipse", (40, 40, 160, 160))])
    attributes = describe_product(photo, mask)
    assert attributes.shape.shape == "produce"
    assert attributes.colour_names[0] == "orange"
    sku = SkuMetadata(sku_id="FRUIT-1", name="Navel orange", category="orange")
    caption = compose_caption(sku, attributes.colour_names[:1], "produce", attributes.view)
    assert caption.startswith("a photo of an orange orange") and "loose fresh produce" in caption
    assert "produce" in compose_tags(sku, ["orange"], "produce", "front view")


def test_the_event_contract_carries_every_shape_the_captioner_can_measure() -> None:
    assert get_args(Shape) == SHAPE_NAMES


# --- drink cartons -----------------------------------------------------------------------------

# Tall, often face-on, gable-topped: the cartons of a dairy or juice shelf, which the renderer's squat,
# corner-on boxes never showed the shape tree (it called the face-on ones cans).
CARTONS: dict[str, Carton] = {
    "1 l milk carton, face-on, gable and cap": Carton(0.36, 0.36, 0.14, 0.08, 0.0, 0.0, 0.05, 0.0),
    "1 l juice carton, three-quarter view": Carton(0.36, 0.36, 0.14, 0.08, 0.2, 0.5, 0.1, 0.0),
    "juice brick, face-on": Carton(0.4, 0.25, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0),
    "yoghurt carton, level camera": Carton(0.6, 0.4, 0.16, 0.1, 0.0, 0.05, 0.0, 0.0),
    "milk carton without a cap": Carton(0.36, 0.36, 0.14, 0.0, 0.0, 0.2, 0.02, 0.0),
}


@pytest.mark.parametrize("size_px", [256, 512])
@pytest.mark.parametrize("name", sorted(CARTONS))
def test_drink_cartons_are_boxes_not_cans(name: str, size_px: int) -> None:
    assert classify_shape(shape_features(carton_mask(CARTONS[name], size_px))).shape == "box"


def test_renderer_cans_stay_cans_beside_the_cartons() -> None:
    cans = [spec for spec in (make_product(index, seed=2026) for index in range(30)) if spec.shape == "can"]
    assert cans
    for spec in cans:
        photo = render_photo(spec, 0, seed=2026, size_px=256)
        assert classify_shape(shape_features(photo.mask)).shape == "can", spec.sku_id


def test_carton_silhouettes_are_drawn_to_measure() -> None:
    brick = carton_mask(Carton(0.4, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 200) > 0
    rows, columns = np.flatnonzero(brick.any(axis=1)), np.flatnonzero(brick.any(axis=0))
    assert rows.size == 160 or rows.size == 161  # 80 % of the frame
    assert columns.size / rows.size == pytest.approx(0.4, abs=0.02)  # face-on, level: just the front
    assert brick[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1].mean() > 0.97
    gable = shape_features(carton_mask(CARTONS["1 l juice carton, three-quarter view"], 256))
    assert gable["width_03"] < 0.8 < gable["width_50"]  # the gable and cap narrow the top
    first = [mask for _, mask in carton_masks(4, seed=1, roughen=True)]
    again = [mask for _, mask in carton_masks(4, seed=1, roughen=True)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert {shape for shape, _ in carton_masks(4, seed=1, roughen=False)} == {"box"}


# --- the real-photo truth tables ---------------------------------------------------------------


def test_committed_truth_table_labels_every_catalogue_photo_with_known_words() -> None:
    products = read_truth_table(TRUTH_TABLE)
    assert len(products) == 81
    assert len({product.path for product in products}) == 81
    assert all(product.path.endswith("_Iconic.jpg") for product in products)
    assert {product.packaging for product in products} <= set(PACKAGING_SHAPES)
    assert {"loose produce", "carton"} <= {product.packaging for product in products}


def test_development_table_holds_train_split_photos_only() -> None:
    products = read_truth_table(DEV_TABLE)
    assert len(products) >= 40
    assert len({product.path for product in products}) == len(products)
    # Rules are chosen on it, so it must share no photo with the evaluation table, val or test.
    assert all(product.path.startswith("train/") for product in products)
    assert {"loose produce", "carton", "bottle"} <= {product.packaging for product in products}


def test_truth_table_rejects_words_the_captioner_cannot_say(tmp_path: Path) -> None:
    table = tmp_path / "truth.csv"
    table.write_text("class_name,path,colour,alt_colour,packaging\nKiwi,k.jpg,beige,,loose produce\n")
    with pytest.raises(ValueError, match=r"truth.csv:2: colour \['beige'\]"):
        read_truth_table(table)
    table.write_text("class_name,path,colour,alt_colour,packaging\nKiwi,k.jpg,brown,green,crate\n")
    with pytest.raises(ValueError, match="packaging 'crate'"):
        read_truth_table(table)
    table.write_text("class_name,path,colour\nKiwi,k.jpg,brown\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_truth_table(table)


def test_truth_table_saved_by_a_spreadsheet_is_read_and_a_short_row_named(tmp_path: Path) -> None:
    table = tmp_path / "truth.csv"
    # "CSV UTF-8" from a spreadsheet starts with a byte-order mark: it read as a missing class_name.
    table.write_bytes(
        "class_name,path,colour,alt_colour,packaging\r\nKiwi,k.jpg,brown,green,loose produce\r\n".encode(
            "utf-8-sig"
        )
    )
    [kiwi] = read_truth_table(table)
    assert (kiwi.class_name, kiwi.colours, kiwi.packaging) == ("Kiwi", ("brown", "green"), "loose produce")
    # A row cut short: AttributeError ('NoneType' object has no attribute 'strip'), naming no row.
    header = "class_name,path,colour,alt_colour,packaging\n"
    table.write_text(header + "Kiwi,k.jpg,brown,,loose produce\nLime,l.jpg\n")
    with pytest.raises(ValueError, match=r"truth.csv:3: fewer fields than the 5 columns of the header"):
        read_truth_table(table)
    table.write_text(header + "Kiwi,k.jpg,brown,,loose,produce\n")
    with pytest.raises(ValueError, match=r"truth.csv:2: more fields than the 5 columns"):
        read_truth_table(table)


class _DrawnMasks:
    """A stand-in matting session: every photo's mask is its non-white pixels."""

    model_id = "drawn-masks"

    def predict(self, images: Sequence[Image.Image]) -> list[MattingResult]:
        results = []
        for image in images:
            product = np.asarray(image.convert("RGB")).min(axis=2) < 240
            mask = np.where(product, np.uint8(255), np.uint8(0))
            results.append(MattingResult(product.astype(np.float32), mask, float(product.mean()), 1.0))
        return results


def test_real_accuracy_scores_first_colour_against_acceptable_ones_and_packaging_by_its_shapes(
    tmp_path: Path,
) -> None:
    orange = Image.new("RGB", (160, 160), (255, 255, 255))
    ImageDraw.Draw(orange).ellipse((30, 30, 130, 130), fill=(240, 140, 30))
    orange.save(tmp_path / "orange.png")
    carton = Image.new("RGB", (160, 160), (255, 255, 255))
    ImageDraw.Draw(carton).rectangle((35, 20, 125, 140), fill=(30, 140, 60))  # squat: a box to the tree
    carton.save(tmp_path / "carton.png")
    products = [
        RealProduct("Orange", "orange.png", ("orange",), "loose produce"),
        RealProduct("Juice", "carton.png", ("green",), "carton"),
        RealProduct("Wrong", "orange.png", ("red", "pink"), "bottle"),
    ]
    report = real_accuracy(products, tmp_path, session=cast(MattingSession, _DrawnMasks()))
    assert report.n_real_products == 3
    assert report.colour_accuracy == pytest.approx(2 / 3, abs=1e-3)
    assert report.packaging_accuracy == pytest.approx(2 / 3, abs=1e-3)
    assert report.colour_misses == [{"path": "orange.png", "truth": ["red", "pink"], "got": "orange"}]
    assert report.packaging_misses == [{"path": "orange.png", "truth": "bottle", "got": "produce"}]


def test_a_photo_other_than_the_one_labelled_is_refused(tmp_path: Path) -> None:
    """The truth tables named photos by path only: a re-encoded copy of the dataset silently changed
    the committed real-photo figures. With a sha256 in the row, another file there is refused."""
    import hashlib

    photo = tmp_path / "orange.png"
    Image.new("RGB", (64, 64), (240, 140, 30)).save(photo)
    right = hashlib.sha256(photo.read_bytes()).hexdigest()
    session = cast(MattingSession, _DrawnMasks())
    labelled = RealProduct("Orange", "orange.png", ("orange",), "loose produce", right)
    assert real_accuracy([labelled], tmp_path, session=session).n_real_products == 1
    Image.new("RGB", (64, 64), (240, 140, 31)).save(photo)  # another file at the same path
    with pytest.raises(ValueError, match="not the photo the truth table labelled"):
        real_accuracy([labelled], tmp_path, session=session)
    # The committed tables carry each photo's sha256.
    assert all(product.sha256 for product in read_truth_table(TRUTH_TABLE) + read_truth_table(DEV_TABLE))
