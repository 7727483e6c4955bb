"""Review 47 of the gate: edge values of the checks, and what their messages tell a reviewer."""

from __future__ import annotations

import re

import pytest

from shared.gate.checks import MAX_DECLARED_GAIN, ColourStats, GateThresholds, drift_check

STATS = ColourStats(mean_lab=(50.0, 0.0, 0.0), std_lab=(10.0, 5.0, 5.0), pixels=1000)


@pytest.mark.parametrize(
    "gain",
    [MAX_DECLARED_GAIN + 0.004, 1 / MAX_DECLARED_GAIN - 0.0001, 0.001, 1e-300],
    ids=["above", "below", "tiny", "vanishing"],
)
def test_a_refused_colour_gain_is_shown_beyond_the_bound_it_breaks(gain: float) -> None:
    """A declared gain just past x2 (2.004) or just under x0.5 (0.4999), or a vanishing one (0.001), read
    "a colour gain of (2.00, ...)", "(0.50, ...)" or "(0.00, ...)" "beyond x2 either way": the figure a
    reviewer saw was within the bound, or no gain at all. Each is shown at as many decimals as tell it
    from the bound."""
    check = drift_check(
        product=STATS, reference=STATS, thresholds=GateThresholds(), colour_gain=(1.0, gain, 1.0)
    )
    assert not check.passed
    shown = re.search(r"colour gain of \(([^)]*)\)", check.message)
    assert shown is not None, check.message
    figure = float(shown.group(1).split(", ")[1])
    assert not 1 / MAX_DECLARED_GAIN <= figure <= MAX_DECLARED_GAIN, check.message
    assert figure > 0, check.message
