"""Review 49: wording bugs of a VLM's sentence merged into a caption (``merge_sentence``).

Of a product whose shape the masks could not tell ("other"), "a can of beans" read "a product of
beans".
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
