"""Settings of the gate stage: environment variables ``SKUFORGE_GATE_*``.

They sit beside the shared ``Settings`` like the matting stage's: field names carry the ``gate_``
prefix under ``SKUFORGE_``, so ``shared.config.describe_validation_error`` names the variables.
Per-category overrides are JSON, e.g.::

    SKUFORGE_GATE_CATEGORY_OVERRIDES='{"pouch": {"iou_min": 0.85}, "bottle": {"drift_tolerance": 25}}'

The keys inside a category are the fields of ``shared.gate.checks.GateThresholds``.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import ENV_PREFIX
from shared.gate.checks import GateThresholds

# The defaults are the thresholds' own (shared/gate/checks.py), written there once.
_DEFAULTS = GateThresholds()


class GateSettings(BaseSettings):
    """The gate's thresholds: global defaults and per-category overrides."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

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
        description="largest colour drift (Lab units) of the product region from the reference photo's",
    )
    gate_category_overrides: dict[str, dict[str, float]] = Field(
        default={},
        description=(
            "JSON: category -> thresholds replaced for it (iou_min, min_foreground_fraction, "
            "max_foreground_fraction, drift_tolerance)"
        ),
    )

    @field_validator("gate_category_overrides")
    @classmethod
    def _overrides_are_valid(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        # Apply every category's overrides once so a typo fails at start-up, not on the first item.
        for category, overrides in value.items():
            try:
                GateThresholds().with_overrides(overrides)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"category {category!r}: {exc}") from None
        return value

    def thresholds_for(self, category: str) -> GateThresholds:
        """The thresholds an item of ``category`` is held to: the global ones, then its overrides."""
        base = GateThresholds(
            iou_min=self.gate_iou_min,
            min_foreground_fraction=self.gate_min_foreground_fraction,
            max_foreground_fraction=self.gate_max_foreground_fraction,
            drift_tolerance=self.gate_drift_tolerance,
        )
        return base.with_overrides(self.gate_category_overrides.get(category, {}))
