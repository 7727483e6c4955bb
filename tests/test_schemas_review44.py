"""Review 44 of the event schemas and the small shared helpers (argtypes, keys, photos)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest

from shared.argtypes import float_between, non_negative_float


@pytest.mark.parametrize(
    "parse", [non_negative_float, float_between(0.0, 1.0)], ids=["non_negative", "between"]
)
@pytest.mark.parametrize("text", ["-0", "-0.0", "-0e5", "-1e-400"])
def test_a_negative_zero_is_taken_as_zero_not_recorded_as_minus_zero(
    parse: Callable[[str], float], text: str
) -> None:
    # "-0" is 0, so it is taken; kept as -0.0 it was written "-0.0" into results JSON and "-0" in messages.
    value = parse(text)
    assert value == 0.0
    assert math.copysign(1.0, value) == 1.0
    assert json.dumps(value) == "0.0"
