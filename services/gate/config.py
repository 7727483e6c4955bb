"""Settings of the gate stage: environment variables ``SKUFORGE_GATE_*``.

They sit beside the shared ``Settings`` like the matting stage's: field names carry the ``gate_``
prefix under ``SKUFORGE_``, so ``shared.config.describe_validation_error`` names the variables.
Per-category overrides are JSON, e.g.::

    SKUFORGE_GATE_CATEGORY_OVERRIDES='{"pouch": {"iou_min": 0.85}, "bottle": {"drift_tolerance": 25}}'

The keys inside a category are the fields of ``shared.gate.checks.GateThresholds``. Categories are
free text typed by people, so they match ignoring case and spaces around and between words
(``" Pouch"`` is ``"pouch"``); two keys that are one category that way are refused at start-up, and
so is a category, or a threshold of one, given twice (JSON would keep the last without a word).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from pydantic import Field, StrictFloat, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode

from shared.config import SETTINGS_CONFIG, json_setting
from shared.gate.checks import GateThresholds

# The defaults are the thresholds' own (shared/gate/checks.py), written there once.
_DEFAULTS = GateThresholds()
_THRESHOLD_NAMES = tuple(item.name for item in fields(GateThresholds))


class GateSettings(BaseSettings):
    """The gate's thresholds: global defaults and per-category overrides."""

    model_config = SETTINGS_CONFIG

    gate_iou_min: float = Field(
        default=_DEFAULTS.iou_min,
        ge=0.0,
        le=1.0,
        description="IoU(predicted, expected mask) at or above which an item passes",
    )
    gate_min_foreground_fraction: float = Field(
        default=_DEFAULTS.min_foreground_fraction,
        ge=0.0,
        lt=1.0,
        description="a predicted mask covering less of the frame is near-empty",
    )
    gate_max_foreground_fraction: float = Field(
        default=_DEFAULTS.max_foreground_fraction,
        gt=0.0,
        le=1.0,
        description="a predicted mask covering more of the frame is flagged",
    )
    gate_drift_tolerance: float = Field(
        default=_DEFAULTS.drift_tolerance,
        gt=0.0,
        allow_inf_nan=False,  # inf would reach every event's check as JSON null, which consumers refuse
        description="largest colour drift (Lab units) of the product region from the reference photo's",
    )
    # Strict: JSON true/false were read as 1.0/0.0 (an IoU minimum of 1 flags nearly every item).
    # NoDecode: read here (``_decoded``), where a key given twice is seen, not by pydantic-settings.
    gate_category_overrides: Annotated[dict[str, dict[str, StrictFloat]], NoDecode] = Field(
        default={},
        description=(
            "JSON: category (any case and spacing) -> thresholds replaced for it, as JSON numbers "
            "(iou_min, min_foreground_fraction, max_foreground_fraction, drift_tolerance)"
        ),
    )

    @field_validator("gate_category_overrides", mode="before")
    @classmethod
    def _decoded(cls, value: object) -> object:
        return json_setting(value, default="{}")

    @field_validator("gate_max_foreground_fraction")
    @classmethod
    def _fractions_are_ordered(cls, value: float, info: ValidationInfo) -> float:
        # Each fraction is valid alone; the pair is checked here so it fails at start-up, not per item.
        low = info.data.get("gate_min_foreground_fraction")
        if low is not None and not low < value:
            raise ValueError(f"must be above SKUFORGE_GATE_MIN_FOREGROUND_FRACTION ({low})")
        return value

    @field_validator("gate_category_overrides")
    @classmethod
    def _overrides_are_valid(
        cls, value: dict[str, dict[str, float]], info: ValidationInfo
    ) -> dict[str, dict[str, float]]:
        normalised: dict[str, dict[str, float]] = {}
        spelled: dict[str, str] = {}
        for category, overrides in value.items():
            key = category_key(category)
            if not key:
                raise ValueError(f"category {category!r} is blank")
            if key in normalised:
                raise ValueError(
                    f"categories {spelled[key]!r} and {category!r} are the same category "
                    "(matched ignoring case and spaces); keep one"
                )
            normalised[key], spelled[key] = overrides, category
        # Apply every category's overrides to the global thresholds (as thresholds_for will), so a
        # typo or a pair made invalid by the globals fails at start-up, not on the first item.
        try:
            base = _global_thresholds(info.data)
        except (KeyError, ValueError):
            return normalised  # a global threshold is invalid, and already reported under its own name
        for category, overrides in value.items():
            try:
                base.with_overrides(overrides)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"category {category!r}: {exc}") from None
        return normalised

    def thresholds_for(self, category: str) -> GateThresholds:
        """The thresholds an item of ``category`` is held to: the global ones, then its overrides."""
        overrides = self.gate_category_overrides.get(category_key(category), {})
        return _global_thresholds(vars(self)).with_overrides(overrides)


def category_key(category: str) -> str:
    """``category`` as overrides are looked up: case-folded, spaces trimmed and collapsed to one."""
    return " ".join(category.casefold().split())


def _global_thresholds(values: dict[str, Any]) -> GateThresholds:
    """The global thresholds from the settings' ``gate_*`` values (``KeyError`` if one is missing,
    ``ValueError`` if they are invalid together)."""
    return GateThresholds(**{name: values[f"gate_{name}"] for name in _THRESHOLD_NAMES})
