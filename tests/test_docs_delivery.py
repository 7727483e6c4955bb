"""The runtime's windows that docs/delivery.md gives as figures, held to the code: how many completed
inputs a stage remembers to skip a redelivered one (``DEDUPE_WINDOW``), how many failing records'
attempts it keeps (``ATTEMPTS_KEPT``), and how many handled inputs wait for a commit that keeps failing
(``MAX_UNCOMMITTED_INPUTS``). Written by hand, they would drift from the constants unseen."""

from __future__ import annotations

import re

from shared import runtime
from tests.support.docs import ROOT

DELIVERY = (ROOT / "docs" / "delivery.md").read_text(encoding="utf-8")

# Where the doc states each figure, and the constant that holds it.
STATED_FIGURES = {
    "DEDUPE_WINDOW": re.compile(r"a window of the last ([\d,]+) per process"),
    "ATTEMPTS_KEPT": re.compile(r"the last ([\d,]+) failing records' counts are kept"),
    "MAX_UNCOMMITTED_INPUTS": re.compile(r"at most ([\d,]+) handled inputs wait for a commit"),
}


def misstated_figures_in(text: str) -> list[str]:
    """The runtime's figures ``text`` states other than the code's, or does not state where expected."""
    flowing = " ".join(text.split())  # a figure's sentence may wrap
    wrong = []
    for name, where in STATED_FIGURES.items():
        value = getattr(runtime, name)
        said = where.findall(flowing)
        if not said:
            wrong.append(f"{name}: not stated as {where.pattern!r}")
        figure = f"{value:,}"
        wrong += [f"{name}: says {other}, the code has {figure}" for other in said if other != figure]
    return wrong


def test_delivery_states_the_runtimes_windows_as_the_code_has_them() -> None:
    assert misstated_figures_in(DELIVERY) == []


def test_a_misstated_or_reworded_window_is_caught() -> None:
    kept = f"{runtime.ATTEMPTS_KEPT:,}"
    wrong = DELIVERY.replace(f"the last {kept} failing", "the last 5,000 failing")
    assert misstated_figures_in(wrong) == [f"ATTEMPTS_KEPT: says 5,000, the code has {kept}"]
    reworded = " ".join(DELIVERY.split()).replace("a window of the last", "a window of the most recent")
    assert [error.split(":")[0] for error in misstated_figures_in(reworded)] == ["DEDUPE_WINDOW"]
