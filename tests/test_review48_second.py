"""Second opinion on review 48's changes: what they broke that their own tests did not show."""

from __future__ import annotations

from schemas.envelope import clipped


def _kept_and_left_out(cut: str) -> tuple[str, int]:
    kept, mark = cut.rsplit("... [", 1)
    assert mark.endswith(" more characters cut]"), cut
    return kept, int(mark.removesuffix(" more characters cut]"))


def test_a_cut_at_a_word_takes_a_newline_for_the_space_between_words() -> None:
    """A failure's message on several lines (a store's, a traceback's) was cut at the last space, not
    at the newline just before the word the limit fell in: a whole line's last words were left out."""
    text = "cannot write the object\n" + "x" * 30 + "\n" + "y" * 400
    cut = clipped(text, 90, at_word=True)
    kept, left_out = _kept_and_left_out(cut)
    assert kept == "cannot write the object\n" + "x" * 30, cut
    assert left_out == len(text) - len(kept) and len(cut) <= 90


def test_a_cut_at_a_word_ends_whatever_the_message() -> None:
    """``IngestIncomplete`` quotes its failure with ``clipped(..., 300, at_word=True)``. Where a word's
    end was a newline, the cut went back and forth between two words for ever (the count's digits moved
    the limit across the newline, which was a word's end on one side only): the ingest hung at its
    failure, and never said it had stopped."""
    text = "ab " * 89 + "ab\n" + "x" * 40 + " " + "y" * 955
    cut = clipped(text, 300, at_word=True)
    kept, left_out = _kept_and_left_out(cut)
    assert text.startswith(kept) and left_out == len(text) - len(kept), cut
    assert len(cut) <= 300 and text[len(kept)].isspace(), cut
