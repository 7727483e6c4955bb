"""Review 46 of the gate: what docs/gate-and-trainstore.md tells a user the checks do, against the checks."""

from __future__ import annotations

from pathlib import Path

from shared.gate.checks import MAX_DECLARED_GAIN, ColourStats, GateThresholds, drift_check

DOCS = Path(__file__).resolve().parents[1] / "docs" / "gate-and-trainstore.md"


def _drift_row() -> str:
    (row,) = (line for line in DOCS.read_text().splitlines() if line.startswith("| `product_drift` |"))
    return row


def test_the_docs_say_a_declared_gain_below_one_half_fails_as_one_above_two_does() -> None:
    """The table said a declared gain "beyond x2 in any channel fails by itself"; the check also fails a
    gain below x0.5 (a product darkened to under half), which read as passing. A backend author sizing
    its scene light by the table saw items flagged product_drift the docs said would pass."""
    stats = ColourStats(mean_lab=(50.0, 0.0, 0.0), std_lab=(10.0, 5.0, 5.0), pixels=1000)
    low = 1 / MAX_DECLARED_GAIN - 0.05
    check = drift_check(
        product=stats, reference=stats, thresholds=GateThresholds(), colour_gain=(1.0, low, 1.0)
    )
    assert not check.passed, "the check passed a gain below 1/2: the docs below are then right as they were"

    row = _drift_row()
    assert "below \N{MULTIPLICATION SIGN}0.5" in row, row
