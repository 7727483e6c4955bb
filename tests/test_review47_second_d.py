"""Review 47, second opinion on the contract and gate-figure changes: what they changed for values that
were shown right before."""

from __future__ import annotations

from shared.gate.checks import ColourStats, GateThresholds, drift_check, figures


def test_a_small_colour_drift_reads_at_its_digits_beside_its_tolerance() -> None:
    """A drift is in Lab units, not a share of the frame: a product pasted back nearly as it was moves
    0.03 units, read "moved 0.0 Lab units (tolerance 20.0)". The rule that a fraction strictly between 0
    and 1 never reads as 0 or 1 took it for one, and the message read "0.03 (tolerance 20.00)", and a
    drift of float noise "0.0000001 (tolerance 20.0000000)"."""
    reference = ColourStats(mean_lab=(50.0, 10.0, 10.0), std_lab=(5.0, 5.0, 5.0), pixels=10_000)
    for moved, shown in ((0.03, "0.0"), (1e-7, "0.0")):
        product = ColourStats(mean_lab=(50.0, 10.0 + moved, 10.0), std_lab=(5.0, 5.0, 5.0), pixels=10_000)
        check = drift_check(
            product=product, reference=reference, thresholds=GateThresholds(), colour_gain=None
        )
        assert check.passed
        assert check.message == f"product colours moved {shown} Lab units from the reference (tolerance 20.0)"
    # The console's check table shows every check so, at 3 decimals.
    assert figures(0.0004, 20.0) == ("0.000", "20.000")
    # Fractions (an IoU, a share of the frame: a threshold from 0 to 1) still never read as none or all.
    assert figures(0.9996, 0.9) == ("0.9996", "0.9000")
    assert figures(0.0000125, 0.005, 2, "%") == ("0.001%", "0.500%")
    assert figures(0.0000125, 0.0, 2, "%") == ("0.001%", "0.000%")
