"""Review 48: small wording bugs of the captioner's captions and tags.

A VLM's "a box of cans" of a product measured as a box read "a box of boxes": the contents after a
container's "of" were replaced as packaging.
"""

from __future__ import annotations

import pytest

from shared.captioning.prompts import merge_sentence


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
