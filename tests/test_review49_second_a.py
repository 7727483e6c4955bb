"""Review 49, second opinion: what today's captioner, cut and dashboard commits still got wrong.

merge_sentence now keeps a sentence's commas, yet its "two packaging words in a row are one" rule ("a
tin can") still read across one: "cans, jars" of a box lost a list item. And 4aa5a075 stopped "an
a box" only where the colour dropped is also a noun ("an orange, a box"): "a red, a blue box" of a blue
box still read "an a blue box", the article before the red redone for the next article.
"""

from __future__ import annotations

import pytest

from shared.captioning.prompts import merge_sentence


@pytest.mark.parametrize(
    ("sentence", "merged"),
    [
        # Two packaging words parted by a comma are two things of a list, each the measured shape.
        ("cans, jars", "boxes, boxes"),
        ("cans, bottles and jars", "boxes, boxes and boxes"),
        ("a tin, a can", "a box, a box"),
        # Without the comma they are still one packaging ("a tin can" is a can).
        ("a tin can", "a box"),
        ("two tin cans", "two boxes"),
    ],
)
def test_two_packaging_words_parted_by_a_comma_are_two_things(sentence: str, merged: str) -> None:
    assert merge_sentence("C", sentence, ["red"], "box") == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "merged"),
    [
        # A colour dropped between two articles leaves one article, not "an a".
        ("a red, a blue box", "a blue box"),
        ("a red and a blue box", "a blue box"),
        ("a red, the blue box", "the blue box"),
        # The articles of words kept are the model's own: "a blue box, a blue can" keeps both.
        ("a blue box, a blue can", "a blue box, a blue box"),
        ("an orange, a blue box", "an orange, a blue box"),
    ],
)
def test_a_colour_dropped_before_an_article_leaves_one_article(sentence: str, merged: str) -> None:
    assert merge_sentence("C", sentence, ["blue"], "box") == f"C, {merged}"
