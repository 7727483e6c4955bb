"""The quality gate's pure arithmetic (IoU, mask checks, colour drift); the stage is ``services/gate``."""

from shared.gate.checks import (
    GateThresholds,
    borders_touched,
    colour_drift,
    colour_stats,
    evaluate,
    failed_reasons,
    foreground_fraction,
    mask_iou,
)

__all__ = [
    "GateThresholds",
    "borders_touched",
    "colour_drift",
    "colour_stats",
    "evaluate",
    "failed_reasons",
    "foreground_fraction",
    "mask_iou",
]
