"""Review 49, second opinion: what today's captioner, cut and dashboard commits still got wrong.

merge_sentence now keeps a sentence's commas, yet its "two packaging words in a row are one" rule ("a
tin can") still read across one: "cans, jars" of a box lost a list item.
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
