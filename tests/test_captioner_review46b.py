"""A caption with a BLIP sentence on long metadata: the two together must stay under the event's
caption limit (``MAX_CAPTION_CHARS``), or the captioner's event broke its own contract."""

from __future__ import annotations

from schemas.common import SkuMetadata
from schemas.events import MAX_CAPTION_CHARS, CaptionedPhoto
from shared.captioning.prompts import compose_caption, merge_sentence

# Every metadata field at its longest: the attribute caption is at its longest too.
LONG_SKU = SkuMetadata(
    sku_id="LONG-1",
    name="Extra " + "Wholegrain Crunch " * 10,
    brand="Brand " * 16,
    series="Harvest " * 12,
    category="breakfast cereal " * 5,
)
# BLIP's sentence is up to 200 tokens: long words make many characters of them.
LONG_SENTENCE = " ".join(f"wholesomeness{index} breakfastarrangement" for index in range(60))


def test_a_long_sentence_on_long_metadata_is_cut_at_a_word_under_the_caption_limit() -> None:
    colours = ["red", "white", "yellow"]
    caption = compose_caption(LONG_SKU, colours, "box", "front view")
    assert len(caption) + len(LONG_SENTENCE) > MAX_CAPTION_CHARS  # it did not fit, as the test needs
    merged = merge_sentence(caption, LONG_SENTENCE, colours, "box")
    assert len(merged) <= MAX_CAPTION_CHARS
    added = merged.removeprefix(f"{caption}, ")
    assert added and LONG_SENTENCE.startswith(added) and LONG_SENTENCE[len(added)] == " "
    photo = CaptionedPhoto.model_validate(
        {
            "photo_id": "p1",
            "image": {"uri": "file:///p1.png", "sha256": "0" * 64, "bytes": 1, "width": 8, "height": 8},
            "usable": True,
            "caption": merged,
        }
    )
    assert photo.caption == merged


def test_a_sentence_that_fits_is_appended_whole() -> None:
    colours = ["red"]
    caption = compose_caption(LONG_SKU, colours, "box", "front view")
    sentence = "wholesome breakfast on a kitchen table"
    assert merge_sentence(caption, sentence, colours, "box") == f"{caption}, {sentence}"
