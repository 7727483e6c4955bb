"""The item page's saved decision, read by a test however late it looks (review 49).

The page marks a saved decision (``body[data-decided]``, the status line) and leaves for the next item
400 ms later: a test that looked later, on a loaded CI machine, met the next page and timed out waiting.
Held on the page (``held_on_the_page``), the test sees it however late, and the page moves on once let go.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.support.console_browser import claimed_in_browser, held_on_the_page

pytestmark = pytest.mark.slow


def test_a_saved_decision_looked_for_late_is_seen_and_the_page_then_moves_on(tmp_path: Path) -> None:
    with claimed_in_browser(tmp_path) as (parts, task, tab):
        with held_on_the_page(tab):
            tab.keyboard.press("p")
            time.sleep(2.0)  # looking later than the page's 400 ms, as a test on a loaded machine may
            tab.wait_for_selector("body[data-decided='approve_predicted']")
            assert "approved (approve_predicted)" in tab.inner_text("#status")
            assert parts.tasks.get(task.task_id).state == "approved"
        tab.wait_for_url(re.compile(r"/\?empty=1$"))  # nothing left: the queue says so
