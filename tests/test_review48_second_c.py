"""Review 48, second opinion (c): what today's changes broke, each held by a test that failed on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.captioning.prompts import merge_sentence
from tests.support.console import build_console, flagged_item, pending_envelope
from tests.support.console_browser import (
    fresh_tab,
    launch_chromium,
    open_claimed_item,
    require_chromium,
    serving,
)


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


# No renewal comes during the browser test (the page renews every third of the lease): what a 409 to a
# decision does is the page's doing alone.
LONG_LEASE_S = 3600.0


@pytest.mark.slow
def test_a_decision_refused_as_the_lease_ran_out_keeps_the_item_nobody_took(tmp_path: Path) -> None:
    """The page's lease ran out (a laptop asleep, renewals that failed) and nobody took the item: the
    task is back in the queue, and the decision is answered 409. 08d7e0d7 let go of the item on any 409
    to a decision where the task was not claimed by this reviewer, a pending one too: the renewal stopped
    and the page said "n claims the next one", the painted mask left behind, where its next renewal
    claims the item again in place (as item.js's own comment and docs/console.md have it)."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    parts = build_console(tmp_path, lease_s=LONG_LEASE_S)
    envelope = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(envelope)
    task_id = envelope.event_id
    with serving(parts) as port, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tab = fresh_tab(browser)
            open_claimed_item(tab, port, task_id)
            parts.clock.advance(LONG_LEASE_S + 1)  # alice's lease runs out; nobody claims the item

            tab.keyboard.press("e")
            tab.wait_for_selector("#status:has-text('not saved: ')")
            status = tab.text_content("#status") or ""
            assert "no longer holds the item" not in status, status
            tab.keyboard.press("n")  # still held: the next item is not claimed over it
            tab.wait_for_selector("#status:has-text('decide or release this item first')")
        finally:
            browser.close()
    assert parts.tasks.get(task_id).state == "pending"
