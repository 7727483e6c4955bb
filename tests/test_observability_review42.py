"""The runtime's latency histograms reach as far as a stage may take."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.observability import StageMetrics

# A batch may run this long before the group drops the member (SKUFORGE_MAX_POLL_INTERVAL_MS).
POLL_LIMIT_S = Settings.model_fields["max_poll_interval_ms"].default / 1000


@pytest.mark.parametrize(
    "histogram", ["skuforge_handler_seconds", "skuforge_batch_seconds", "skuforge_model_seconds"]
)
def test_a_batch_as_long_as_the_poll_interval_allows_lands_in_a_finite_bucket(histogram: str) -> None:
    """Before, the top bucket was 300 s, half the default poll interval: every batch of 5 to 10
    minutes (the slowest, those nearing a rebalance) fell in +Inf, and histogram_quantile, which
    answers the highest finite bound there, showed them on the dashboard as 300 s."""
    metrics = StageMetrics("review")
    metrics.declare_model("diffusion")
    seconds = POLL_LIMIT_S - 1
    metrics.handler_seconds.labels("review").observe(seconds)
    metrics.batch_seconds.labels("review").observe(seconds)
    metrics.model_seconds.labels("review", "diffusion").observe(seconds)
    [family] = [f for f in metrics.registry.collect() if f.name == histogram]
    finite = [
        float(sample.labels["le"])
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf" and sample.value == 1
    ]
    assert finite, f"{histogram}: {seconds:g} s fell in +Inf only"
    # The bucket it fell in says it was over 300 s, not somewhere up to 10 minutes.
    assert min(finite) > 300
