"""tests/support/polling.py's wait_for: the one polling loop the tests share, where five test files had
their own."""

from __future__ import annotations

import pytest

from tests.support.polling import wait_for


def test_wait_for_returns_the_conditions_first_truthy_value() -> None:
    answers = iter([None, [], ["SkuforgeStageDown"]])
    assert wait_for("the alert", lambda: next(answers), timeout_s=60, every_s=0) == ["SkuforgeStageDown"]


def test_wait_for_names_what_it_waited_for_how_long_and_the_last_answer() -> None:
    message = r"^timed out after 0 s waiting for the lag alert \(last: \[\]\)$"
    with pytest.raises(AssertionError, match=message):
        wait_for("the lag alert", lambda: [], timeout_s=0)
