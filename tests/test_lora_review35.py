"""The LoRA trainer, review 35: an adapter trained and registered whose ``adapter.published`` the broker
refuses is logged as a publication that failed, not as a training job that failed.

Training is stubbed (``stub_training``); the publication goes to the real broker, through the real
``kafka_publisher``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from schemas.topics import ADAPTER_PUBLISHED
from tests.support.bus import read_topic
from tests.support.lora import refused_publication, served
from tests.support.polling import wait_for

pytestmark = pytest.mark.kafka

BROKER_DEFAULT = "1048588"
# How long the trainer may take to publish once the broker shows the raised limit: a deadline, not a
# count of polls, since the polls between its tries grow with each refused try.
PUBLISHED_WITHIN_S = 120.0


def test_a_publication_the_broker_refuses_is_logged_as_one_retried_without_training_again(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Trained and registered, an adapter whose adapter.published the topic refused was logged "training
    job failed", twice: the operator went looking at the GPU, the model and the photos, though only the
    broker (or the topic's max.message.bytes) was to blame, and the next poll published it without
    training again. The log says the publication failed and is retried, naming the adapter and topic."""
    store, trainer, job, topic, admin = refused_publication(tmp_path, kafka_bootstrap)

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()
    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    assert logged, "the failed publication was not logged"
    assert not [r for r in logged if "training job failed" in r.getMessage()]
    for entry in logged:
        assert "adapter.published" in entry.getMessage() and "retried" in entry.getMessage()
        assert getattr(entry, "adapter_id", None) == job.adapter_id
        assert getattr(entry, "topic", None) == ADAPTER_PUBLISHED.name
        assert topic in getattr(entry, "reason", "") and "MessageSizeTooLarge" in entry.reason  # type: ignore[attr-defined]
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1
    assert trainer.metrics.jobs.labels("failed")._value.get() == 0
    assert served(store) == job.adapter_id and len(stub_training) == 1  # trained and registered

    # The topic takes it again: the next poll publishes the adapter, not trained again.
    limit = {"max.message.bytes": BROKER_DEFAULT}
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=limit)])

    def broker_shows() -> bool:
        asked = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": None})
        configs = admin.describe_configs([asked], config_filter="all")["topic"][topic]
        return bool(configs["max.message.bytes"]["value"] == BROKER_DEFAULT)

    # The broker applies the change when it reads the metadata log, seconds later on a loaded machine.
    # Polled meanwhile, each refused try doubles the polls skipped before the next (40 polls held only
    # about 6 tries, the last some 18 s in): wait for the broker first, so the trainer's next try is due
    # at once, then poll until it publishes, however long the polls take.
    wait_for(f"the broker to show max.message.bytes={BROKER_DEFAULT}", broker_shows, timeout_s=60)
    deadline = time.monotonic() + PUBLISHED_WITHIN_S
    trainer.poll()
    while trainer.last_error is not None:
        assert time.monotonic() < deadline, (
            f"not published within {PUBLISHED_WITHIN_S:g} s of the topic taking it: {trainer.last_error}"
        )
        time.sleep(0.2)
        trainer.poll()
    assert len(stub_training) == 1
    [envelope] = read_topic(kafka_bootstrap, topic, expect=1)
    assert job.adapter_id.encode() in envelope.value
