"""Per-category gate thresholds match the category as people type it, not byte for byte.

Categories are free text from the SKU metadata: an override for "pouch" silently did not apply to
"Pouch" or " pouch", whose items were held to the default thresholds instead.
"""

from __future__ import annotations

import pytest

from services.gate.config import GateSettings
from shared.config import ConfigError, load_settings
from shared.gate.checks import GateThresholds


@pytest.mark.parametrize("key", ["pouch", " Pouch ", "POUCH"])
@pytest.mark.parametrize("category", ["pouch", "Pouch", " pouch", "pouch\t", "PoUcH"])
def test_a_category_override_applies_whatever_the_case_and_surrounding_spaces(
    monkeypatch: pytest.MonkeyPatch, key: str, category: str
) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", f'{{"{key}": {{"iou_min": 0.8}}}}')
    gate = load_settings(GateSettings)
    assert gate.thresholds_for(category) == GateThresholds(iou_min=0.8)
    assert gate.thresholds_for("bottle") == GateThresholds()


def test_spaces_between_words_do_not_split_a_category(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"Oat Milk  Carton": {"drift_tolerance": 30}}')
    gate = load_settings(GateSettings)
    assert gate.thresholds_for("oat milk carton") == GateThresholds(drift_tolerance=30.0)


def test_two_spellings_of_one_category_are_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"iou_min": 0.8}, " Pouch": {"iou_min": 0.95}}'
    )
    with pytest.raises(ConfigError, match=r"SKUFORGE_GATE_CATEGORY_OVERRIDES.*'pouch' and ' Pouch'.*same"):
        load_settings(GateSettings)


def test_a_blank_category_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"  ": {"iou_min": 0.8}}')
    with pytest.raises(ConfigError, match=r"SKUFORGE_GATE_CATEGORY_OVERRIDES.*blank"):
        load_settings(GateSettings)
