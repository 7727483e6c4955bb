"""A batch a handler gives up at the stop (a ``TransientError`` once ``Context.stopping``) is rewound
quietly: nothing committed, but no retry counted and no back-off warning, as a user expects of a stop."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kafka.structs import TopicPartition

from schemas.topics import SKU_INGESTED
from shared.errors import TransientError
from shared.runtime import Context, Emit, Stage
from tests.support.bus import create_topics, file_store_uri, isolated_settings, produce, sku_ingested_payloads
from tests.support.kafka import session_admin


@pytest.mark.kafka
def test_a_batch_given_up_at_the_stop_is_no_retry(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, each stop of a generator mid-batch counted skuforge_retries_total{error="Stopping"} and
    # logged "transient fault; partition paused": noise on the retry dashboards and alerts.
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, partitions=1)
    stage = Stage("quitter", settings=settings)
    given_up: list[str] = []

    @stage.handler(SKU_INGESTED)
    def gives_up_at_the_stop(event: object, ctx: Context) -> list[Emit]:
        stage.stop()  # as SIGTERM would, while the handler works
        assert ctx.stopping
        given_up.append("yes")
        raise TransientError("the stage is stopping: no new request is sent")

    produce(settings, SKU_INGESTED, list(sku_ingested_payloads(stage.store, 1)))
    with caplog.at_level(logging.INFO, logger="skuforge"):
        assert stage.run(install_signal_handlers=False, serve_health=False) == 0
    assert given_up == ["yes"]
    assert stage.metrics.retries.labels("quitter", "TransientError")._value.get() == 0
    assert (
        stage.metrics.messages.labels("quitter", settings.topic_name(SKU_INGESTED), "retry")._value.get() == 0
    )
    warned = [r for r in caplog.records if r.name.startswith("skuforge") and r.levelno >= logging.WARNING]
    assert not warned, caplog.text
    group = f"{settings.consumer_group_prefix}.quitter"
    committed = session_admin(kafka_bootstrap).list_group_offsets(group).get(group, {})
    assert committed.get(TopicPartition(settings.topic_name(SKU_INGESTED), 0)) is None, committed
