"""Second look at the last wave of review-47 changes (b2de8d4c..16ef486a)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.console_browser import (
    claimed_in_browser,
    losing_the_first_answer,
    stroke_on_overlay,
)


@pytest.mark.slow
def test_a_409_whose_stored_mask_does_not_load_is_not_said_to_be_another_mask(tmp_path: Path) -> None:
    # The lost try saved this page's own mask; the check after the 409 could not load the stored one. The
    # page said "with another mask ... this page's mask was not saved", which is not known (and here false).
    tries: list[str] = []

    with claimed_in_browser(tmp_path) as (_, _, tab):
        stroke_on_overlay(tab)
        tab.route("**/api/tasks/*/decision", losing_the_first_answer(tries))
        tab.route("**/images/corrected*", lambda route: route.abort())

        tab.keyboard.press("a")
        tab.wait_for_selector("#status.error:has-text('not saved')")
        tab.keyboard.press("a")

        tab.wait_for_selector("#status:has-text('already decided')")
        status = tab.inner_text("#status")
        assert "error" in (tab.get_attribute("#status", "class") or "")
        assert "another mask" not in status and "was not saved" not in status, status
        assert "could not be checked" in status, status
    assert len(tries) == 2
