"""Comparing configurations measured in interleaved rounds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median_round_ratio(
    numerators: Sequence[float], denominators: Sequence[float], *, digits: int = 2
) -> float:
    """The median of the per-round ratios: each round's two figures were measured side by side (a
    ratio of the two medians paired figures from different rounds: 1.91x where the rounds said 1.65x)."""
    return round(statistics.median(a / b for a, b in zip(numerators, denominators, strict=True)), digits)
