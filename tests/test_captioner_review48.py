"""Review 48: the captioner's words on what BLIP says of real product photos."""

from __future__ import annotations

import pytest

from shared.captioning.prompts import merge_sentence


@pytest.mark.parametrize(
    ("sentence", "colours", "merged"),
    [
        # The second colour of a pair dropped left the "and" before it: "a yellow and bag", a caption
        # (and a diffusion prompt) that says nothing of the bag's colour and reads as a broken sentence.
        ("a close up of a yellow and blue bag", ["yellow"], "a close up of a yellow bag"),
        ("a white-and-blue box on a shelf", ["white"], "a white box on a shelf"),
        ("a red or green apple", ["red"], "a red apple"),
        # Several dropped after the one kept: each takes its "and" with it.
        ("a yellow and blue and green bag", ["yellow"], "a yellow bag"),
        # An "and" between things, not colours, stays.
        ("an apple and blue box", ["red"], "an apple and box"),
    ],
)
def test_an_unmeasured_colour_after_a_measured_one_goes_with_the_and_before_it(
    sentence: str, colours: list[str], merged: str
) -> None:
    assert merge_sentence("C", sentence, colours, "pouch" if "bag" in sentence else "box") == f"C, {merged}"
