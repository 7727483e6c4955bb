"""Refusals that named the fault but not what to do: a smallest photo side past the captioner's size."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, load_settings
from shared.photos import WORKING_SIDE_PX


def test_a_smallest_photo_side_past_the_working_size_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """SKUFORGE_MIN_PHOTO_SIDE_PX=3000 was told pydantic's "less than or equal to 2048", not why 2048."""
    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", str(WORKING_SIDE_PX + 952))
    with pytest.raises(ConfigError) as refused:
        load_settings()
    said = str(refused.value)
    assert f"SKUFORGE_MIN_PHOTO_SIDE_PX: must be at most {WORKING_SIDE_PX}" in said
    assert f"the captioner brings a photo's longer side to {WORKING_SIDE_PX} px" in said
    assert "(got '3000')" in said
    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", "many")  # other faults are told as before
    with pytest.raises(ConfigError, match="SKUFORGE_MIN_PHOTO_SIDE_PX: Input should be a valid integer"):
        load_settings()
