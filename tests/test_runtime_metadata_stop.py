"""A stage stopped while it waits for its input topics' metadata says nothing of joining the group:
before, it logged the warning "joining the group without partition metadata for every topic" on its
way out, for a join that was never going to happen."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas.topics import SKU_INGESTED
from shared.bus import make_consumer
from shared.runtime import Stage
from tests.support.bus import file_store_uri, isolated_settings

pytestmark = pytest.mark.kafka


def test_a_stop_while_waiting_for_topic_metadata_does_not_warn_of_a_join(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))  # its topics not created
    stage = Stage("review", settings=settings)
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    consumer = make_consumer(settings, f"{settings.consumer_group_prefix}.review", "review")
    try:
        consumer.subscribe(stage.topics)
        stage._consumer = consumer
        stage.stop()
        with caplog.at_level(logging.INFO, logger="skuforge"):
            stage._await_topic_metadata(timeout_s=60)
    finally:
        consumer.close()
    assert not [record for record in caplog.records if "joining the group" in record.getMessage()]
