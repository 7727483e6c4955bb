"""The metrics' help texts state the runtime's warning intervals, not a hand-written copy of them."""

from __future__ import annotations

import pytest

from shared import runtime
from shared.observability import StageMetrics


@pytest.mark.parametrize(
    ("metric", "interval_s", "per"),
    [
        ("skuforge_unkeyed_messages", runtime.KEYLESS_WARNING_INTERVAL_S, "topic"),
        ("skuforge_batch_handler_failures", runtime.BATCH_FAILURE_WARNING_INTERVAL_S, "topic"),
        ("skuforge_model_batch_failures", runtime.BATCH_FAILURE_WARNING_INTERVAL_S, "model"),
    ],
)
def test_a_metrics_help_states_the_interval_its_warning_is_logged_at(
    metric: str, interval_s: float, per: str
) -> None:
    """Before, "once a minute" was written by hand: a change of the interval left the help text, and
    docs/ops.md's table generated from it, wrong unseen."""
    [family] = [f for f in StageMetrics("review").registry.collect() if f.name == metric]
    assert f"at most once every {interval_s:g} s per {per}" in family.documentation
