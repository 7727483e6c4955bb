"""Review 49: wording bugs of a VLM's sentence merged into a caption (``merge_sentence``).

Of a product whose shape the masks could not tell ("other"), "a can of beans" read "a product of
beans". "a box full of cans" of a box read "a box full of boxes": only "of" right after the container
was read as what it holds. Every comma was dropped ("apples pears and plums"). And the verb "can"
("you can see a box") was replaced as packaging: "you box see a box".
"""

from __future__ import annotations

import pytest

from shared.captioning.prompts import merge_sentence


@pytest.mark.parametrize(
    ("sentence", "merged"),
    [
        # A container of unknown packaging is a pack, and a count of them stays a count.
        ("a can of beans", "a pack of beans"),
        ("a bag of beans on a table", "a pack of beans on a table"),
        ("two tins of tomatoes", "two packs of tomatoes"),
        ("an old carton of milk", "an old pack of milk"),
        # Packaging that holds nothing named is still only "a product": no container is claimed.
        ("a can on a shelf", "a product on a shelf"),
        ("two bottles", "two products"),
    ],
)
def test_a_container_of_an_unknown_shape_is_a_pack_not_a_product_of(sentence: str, merged: str) -> None:
    assert merge_sentence("C", sentence, ["red"], "other") == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "shape", "merged"),
    [
        # What a container is full of, filled or packed with, or contains, stays as the model said it.
        ("a box full of cans", "box", "a box full of cans"),
        ("a box filled with cans on a shelf", "box", "a box filled with cans on a shelf"),
        ("a bag packed with bottles", "pouch", "a bag packed with bottles"),
        ("a crate containing bottles", "box", "a crate containing bottles"),
        ("a tin full of cans", "box", "a box full of cans"),
        # A container of the measured packaging is that packaging: not "a can full of cans".
        ("a box full of cans", "can", "cans"),
        ("a bag filled with cans on a table", "can", "cans on a table"),
        # Loose produce sheds the container and the words that joined it to what it held.
        ("a bag full of oranges", "produce", "oranges"),
        ("a box filled with apples", "produce", "apples"),
        # Of an unknown shape, the container is a pack.
        ("a can full of beans", "other", "a pack full of beans"),
        # "full" and "with" of no container say nothing of contents: the packaging after is the product.
        ("a shelf full of cans", "box", "a shelf full of boxes"),
        ("a table with a can", "box", "a table with a box"),
    ],
)
def test_what_a_container_is_full_of_is_no_claim_about_the_packaging(
    sentence: str, shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, ["red"], shape) == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "colours", "shape", "merged"),
    [
        ("apples, pears and plums", ["red"], "produce", "apples, pears and plums"),
        ("apples , pears , and plums on a table", ["red"], "produce", "apples, pears, and plums on a table"),
        ("a box, a bottle and a jar", ["red"], "box", "a box, a box and a box"),
        # A container dropped of loose produce leaves the comma before it.
        ("apples, a bag of pears and plums", ["red"], "produce", "apples, pears and plums"),
        # A comma before a colour that goes goes with it: not "a red, box".
        ("a red, white and blue box", ["red"], "box", "a red box"),
        ("a red, lemon yellow box", ["red"], "box", "a red box"),
        ("a red, white, and blue box", ["red"], "box", "a red box"),
        # A comma after a colour that goes goes with it, and one at the end says nothing.
        ("a blue, red box", ["red"], "box", "a red box"),
        ("a box,", ["red"], "box", "a box"),
        # Colours kept keep theirs.
        ("a red, white box", ["red", "white"], "box", "a red, white box"),
        # A comma between digits is the number's: "1,000", not "1 000" or "1, 000".
        ("a 1,000 ml bottle, a glass", ["red"], "bottle", "a 1,000 ml bottle, a glass"),
    ],
)
def test_a_comma_in_the_sentence_stays_between_the_words_it_parted(
    sentence: str, colours: list[str], shape: str, merged: str
) -> None:
    assert merge_sentence("C", sentence, colours, shape) == f"C, {merged}"


def test_a_sentence_cut_to_fit_does_not_end_on_a_comma() -> None:
    caption = "C" * 1788
    merged = merge_sentence(caption, "apples, pears and plums", ["red"], "produce")
    assert merged == f"{caption}, apples"


@pytest.mark.parametrize(
    ("sentence", "shape", "merged"),
    [
        ("you can see a can", "box", "you can see a box"),
        ("it can be opened", "box", "it can be opened"),
        ("a bottle that can be opened", "bottle", "a bottle that can be opened"),
        ("a box which can be opened", "box", "a box which can be opened"),
        ("the label can not be read", "jar", "the label can not be read"),
        ("the can can be recycled", "bottle", "the bottle can be recycled"),
        ("a product that can also be frozen", "pouch", "a product that can also be frozen"),
        # The noun still takes the measured shape, "that" before it included.
        ("that can of soup", "box", "that box of soup"),
        ("a soda can on a table", "bottle", "a soda bottle on a table"),
        ("one can next to a jar", "box", "one box next to a box"),
        ("a can, not a bottle", "box", "a box, not a box"),
        ("the tin can be opened", "box", "the box can be opened"),
    ],
)
def test_only_the_noun_can_is_packaging_not_the_verb(sentence: str, shape: str, merged: str) -> None:
    assert merge_sentence("C", sentence, ["red"], shape) == f"C, {merged}"


@pytest.mark.parametrize(
    ("sentence", "merged"),
    [
        # A colour word before an article is a thing, not a colour: "an orange, a box" read "an a box".
        ("an orange, a box", "an orange, a box"),
        ("an orange a box", "an orange a box"),
        ("a gold, a silver and a bronze medal", "a gold, a silver and a bronze medal"),
        # Before a noun it is still a colour the measurements refute.
        ("an orange box, a blue tin", "a box, a box"),
    ],
)
def test_a_colour_noun_before_an_article_is_the_thing(sentence: str, merged: str) -> None:
    assert merge_sentence("C", sentence, ["red"], "box") == f"C, {merged}"
