"""Comparing configurations measured in interleaved rounds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median_round_ratio(
    numerators: Sequence[float], denominators: Sequence[float], *, digits: int = 2
) -> float:
    """The median of the per-round ratios: each round's two figures were measured side by side (a
    ratio of the two medians paired figures from different rounds: 1.91x where the rounds said 1.65x).
    A round whose baseline (``denominators``) is 0 is a ValueError naming it."""
    # A baseline round at 0 (no event through, no image done) has no ratio: a ZeroDivisionError after
    # the whole run said nothing of which round or which figures.
    zero_rounds = [index for index, value in enumerate(denominators, start=1) if value == 0]
    if zero_rounds:
        raise ValueError(
            f"no per-round ratio: {'round' if len(zero_rounds) == 1 else 'rounds'} "
            f"{', '.join(map(str, zero_rounds))} of {len(denominators)} measured 0 for the baseline "
            f"({list(denominators)}); that run did nothing, look at its output"
        )
    return round(statistics.median(a / b for a, b in zip(numerators, denominators, strict=True)), digits)
