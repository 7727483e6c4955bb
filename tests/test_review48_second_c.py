"""Review 48, second opinion (c): what today's changes broke, each held by a test that failed on them."""

from __future__ import annotations

import pytest

from shared.captioning.prompts import merge_sentence


@pytest.mark.parametrize(
    ("sentence", "colours", "shape", "merged"),
    [
        # "cream" after "sour", "ice" or "whipped" is the dairy product, not a colour kept: the "and" after
        # it joins two foods, and dropping the colour after it took that "and" too ("sour cream onion
        # chips", "ice cream berries").
        (
            "a bag of sour cream and green onion chips",
            ["red"],
            "pouch",
            "a bag of sour cream and onion chips",
        ),
        ("a tub of ice cream and red berries", ["white"], "box", "a box of ice cream and berries"),
        # A colour kept as a colour still takes the "and" before the one dropped.
        ("an orange and blue box", ["orange"], "box", "an orange box"),
        ("a close up of a yellow and blue bag", ["yellow"], "pouch", "a close up of a yellow bag"),
    ],
)
def test_an_and_after_a_colour_word_that_names_a_food_stays_when_the_next_colour_goes(
    sentence: str, colours: list[str], shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, colours, shape) == f"C, {merged}"
