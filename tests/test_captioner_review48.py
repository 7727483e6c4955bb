"""Review 48: the captioner's words on what BLIP says of real product photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.captioning.attributes import plain_background_share
from shared.captioning.prompts import merge_sentence
from shared.generation.backend import PLAIN_BACKGROUND_FROM


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


def test_a_product_shot_on_a_plain_backdrop_that_runs_off_three_sides_of_the_frame_reads_plain() -> None:
    """A close-up on white whose carton runs off the top, the bottom and one side: the backdrop's
    colour was the median of the whole frame border, most of it the product's red, so the white
    backdrop read 0% plain and the photo was taken for an in-store one (its mask cut to the largest
    blob, and the generator drawing from it last). The backdrop is what borders the frame outside the
    product."""
    photo = np.full((200, 160, 3), 245, dtype=np.uint8)
    mask = np.zeros((200, 160), dtype=np.uint8)
    mask[:, :110] = 255
    photo[mask > 0] = (200, 30, 30)
    assert plain_background_share(Image.fromarray(photo), mask) >= PLAIN_BACKGROUND_FROM
    # The same product in a shop stays cluttered.
    clutter = np.random.default_rng(3).integers(0, 256, (200, 160, 3), dtype=np.uint8)
    in_store = np.where(mask[..., None] > 0, photo, clutter)
    assert plain_background_share(Image.fromarray(in_store), mask) < 0.2
    # A product over the whole border leaves none to judge the backdrop by: measured as before.
    framed = np.full((200, 160, 3), 245, dtype=np.uint8)
    ring = np.full((200, 160), 255, dtype=np.uint8)
    ring[40:160, 40:120] = 0
    framed[ring > 0] = (200, 30, 30)
    assert plain_background_share(Image.fromarray(framed), ring) == 0.0


@pytest.mark.parametrize(
    ("sentence", "colours", "merged"),
    [
        # BLIP says of a greyscale photo that it is "a black and white photo": said of the picture, not
        # of the product. Read as colours, the one measured stayed and the caption called the photo
        # white ("a white photo of a bottle"), or black.
        ("a black and white photo of a bottle", ["white"], "a black and white photo of a bottle"),
        ("a black and white photo of a bottle", ["grey"], "a black and white photo of a bottle"),
        # Hyphenated, its words are read apart (as "a blue-and-white box" is), and kept.
        ("a black-and-white picture of a can", ["black"], "a black and white picture of a can"),
        # Said of a thing, they are colours still.
        ("a black and white bottle", ["white"], "a white bottle"),
    ],
)
def test_a_black_and_white_photo_is_said_of_the_picture_not_the_product(
    sentence: str, colours: list[str], merged: str
) -> None:
    shape = "can" if sentence.endswith(" can") else "bottle"
    assert merge_sentence("C", sentence, colours, shape) == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "shape", "merged"),
    [
        # Two packaging words in a row both became the measured one: "a tin can" of a bottle read
        # "a bottle bottle".
        ("a tin can on a table", "bottle", "a bottle on a table"),
        ("two tin cans", "box", "two boxes"),
        # Apart, each is its own word: "a can next to a jar" of a can is "a can next to a can".
        ("a jar next to a can", "can", "a can next to a can"),
    ],
)
def test_two_packaging_words_in_a_row_become_one_measured_word(
    sentence: str, shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, ["red"], shape) == f"C, {merged}"
