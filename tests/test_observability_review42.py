"""The runtime's latency histograms reach as far as a stage may take; a stopped lag watcher shows none."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from shared.config import Settings
from shared.observability import StageMetrics
from tests.support.group_lag import lag_watcher, left_group
from tests.support.kafka import NewTopic

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


@pytest.mark.kafka
def test_a_stopped_lag_watcher_leaves_no_lag_standing(kafka_bootstrap: str, new_topic: NewTopic) -> None:
    """The console serves its intake's registry for as long as it runs, and starts the intake again when
    its run ends (a broker away at the restart keeps it down for minutes): the lag its last watcher read
    stood meanwhile as fresh, a flat number that kept SkuforgeConsumerLagUnreadable quiet for the groups
    it reports while no stage could read them."""
    topic = new_topic("stopped-lag")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for _ in range(3):
        producer.send(topic, value=b"x")
    producer.flush()
    producer.close()
    group = f"lag-{topic}"
    left_group(kafka_bootstrap, group, topic, 1)
    metrics = StageMetrics("console-intake")
    watcher = lag_watcher(kafka_bootstrap, group, topic, metrics)
    try:
        assert watcher.read_once() == {group: {topic: 2}}
        lag = {"group": group, "topic": topic}
        assert metrics.registry.get_sample_value("skuforge_consumer_group_lag_messages", lag) == 2
    finally:
        watcher.stop()
    assert metrics.registry.get_sample_value("skuforge_consumer_group_lag_messages", lag) is None
