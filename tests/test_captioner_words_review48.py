"""Review 48: small wording bugs of the captioner's captions and tags.

A VLM's "a box of cans" of a product measured as a box read "a box of boxes": the contents after a
container's "of" were replaced as packaging. And a zero-width character in the retailer's metadata
("ACME\\u200b") passed into the tags, so the brand's tag matched no "acme".
"""

from __future__ import annotations

import pytest

from schemas.common import SkuMetadata
from shared.captioning.prompts import (
    class_noun,
    compose_caption,
    compose_tags,
    declared_shape,
    merge_sentence,
)


@pytest.mark.parametrize(
    ("sentence", "shape", "merged"),
    [
        # What is in the container is no claim about the packaging: it stays as the model said it.
        ("a box of cans", "box", "a box of cans"),
        ("a box of cans on a shelf", "box", "a box of cans on a shelf"),
        ("a box of tea bags", "box", "a box of tea bags"),
        ("a pack of bottles", "box", "a pack of bottles"),
        ("a six-pack of cans", "box", "a six-pack of cans"),
        ("a pack of cans and bottles", "box", "a pack of cans and bottles"),
        # The container itself still becomes the measured shape, its contents kept.
        ("a bag of apples", "box", "a box of apples"),
        ("a can of beans", "box", "a box of beans"),
        ("a carton of cans", "pouch", "a pouch of cans"),
        ("two tins of jars", "box", "two boxes of jars"),
        # The contents end where the phrase does: another thing after it is packaging again.
        ("a box of cans next to a bottle", "box", "a box of cans next to a box"),
        ("a bag of crisps and a bottle", "pouch", "a bag of crisps and a pouch"),
        # A container of the measured shape's own packaging is that packaging: not "a can of cans".
        ("a box of cans", "can", "cans"),
        ("a bag of tin cans on a table", "can", "tin cans on a table"),
        # Loose produce still sheds its container, and what it held stays.
        ("a bag of oranges", "produce", "oranges"),
    ],
)
def test_only_the_container_before_of_becomes_the_measured_shape(
    sentence: str, shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, ["red"], shape) == f"C, {merged}"


def test_packaging_after_an_of_of_no_container_is_still_the_product() -> None:
    # "of" after a word for the picture or a group is no container's: the packaging after it is the product.
    assert merge_sentence("C", "a close up of a can", ["red"], "box") == "C, a close up of a box"
    assert merge_sentence("C", "a row of bottles", ["red"], "can") == "C, a row of cans"


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e"])
def test_a_zero_width_character_in_metadata_is_no_part_of_a_tag_or_the_caption(invisible: str) -> None:
    sku = SkuMetadata(
        sku_id="SKU-1",
        name=f"Cola{invisible} Zero",
        category=f"Cho{invisible}colate bar{invisible}",
        brand=f"ACME{invisible}",
        series=f"{invisible}Zero",
    )
    tags = compose_tags(sku, ["red"], "box", "front view")
    assert tags == [
        "red",
        "red box",
        "box",
        "chocolate bar",
        "acme",
        "zero",
        "cola zero",
        "front view",
        "product photo",
    ]
    caption = compose_caption(sku, ["red"], "box", "front view")
    assert (
        caption
        == "a photo of a red chocolate bar by ACME, Cola Zero, Zero series, rectangular box, front view"
    )


def test_a_zero_width_character_inside_a_category_word_does_not_split_it() -> None:
    # The category's words name the packaging and the class: "car\u200bton" read "car ton", no carton.
    assert class_noun("juice car\u200bton") == "juice carton"
    assert declared_shape("juice car\u200bton") == "box"
    assert declared_shape("Can\ufeff of beans") == "can"


@pytest.mark.parametrize(
    "brand",
    [
        "\u0915\u094d\u200d\u0937",  # ZWJ shapes a Devanagari conjunct
        "\u0915\u094d\u200c\u0937",  # ZWNJ keeps it apart
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # ZWJ joins the emoji into one
    ],
)
def test_a_joiner_that_shapes_a_script_or_an_emoji_stays_in_the_tag(brand: str) -> None:
    sku = SkuMetadata(sku_id="SKU-1", name="Cola", category="soda can", brand=brand)
    assert brand in compose_tags(sku, ["red"], "can", "front view")
    assert f" by {brand}," in compose_caption(sku, ["red"], "can", "front view")
