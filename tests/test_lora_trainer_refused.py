"""The LoRA trainer, an ``adapter.published`` its topic refuses for good (a record over the topic's
max.message.bytes): every try fails alike until the limit is raised, and the log says so and what to
raise, not only that the next poll publishes it; the tries come on a growing interval, not every poll.

Training is stubbed (``stub_training``); the publication goes to the real broker, through the real
``kafka_publisher``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from services.lora_trainer.stage import PublicationFailed
from tests.support.lora import refused_publication, served

pytestmark = pytest.mark.kafka


def test_a_publication_the_topic_refuses_for_good_names_the_limit_to_raise(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the trainer logged "the next poll publishes it" at every poll (every 5 s) for ever, and
    the operator read an outage that would pass, where only raising the topic's max.message.bytes ends
    it. An outage (the broker away) still reads as one that passes."""
    store, trainer, job, _, _ = refused_publication(tmp_path, kafka_bootstrap)

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()
        trainer.poll()
    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    assert len(logged) >= 2
    for entry in logged:
        message = entry.getMessage()
        assert "refused for good" in message and "max.message.bytes" in message, message
        assert "next poll publishes it" not in message, message
        assert getattr(entry, "adapter_id", None) == job.adapter_id
    assert served(store) == job.adapter_id and len(stub_training) == 1  # registered, trained once


def test_a_publication_the_topic_refuses_for_good_is_tried_again_on_a_growing_interval(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, every poll (every 5 s) sent the event again for as long as the topic refused it: each send
    opened a new producer (its connections, a metadata fetch) that the refusal stopped for good, and logged
    its closing. Now the n-th refusal in a row waits 2**(n-1) polls before the next try; the polls between
    keep the fault (``last_error``) and log no new refusal."""
    store, trainer, job, _, _ = refused_publication(tmp_path, kafka_bootstrap)
    send = trainer.publish
    sent_at: list[int] = []
    poll = 0

    def counted(event: AdapterPublished) -> None:
        sent_at.append(poll)
        send(event)

    trainer.publish = counted
    closed_at: list[int] = []
    with caplog.at_level(logging.ERROR, logger="shared.bus"):
        for poll in range(1, 12):
            caplog.clear()
            trainer.poll()
            assert isinstance(trainer.last_error, PublicationFailed), trainer.last_error
            closed_at += [poll for r in caplog.records if "stopped for good" in r.getMessage()]
    assert sent_at == [1, 3, 6, 11]
    assert closed_at == sent_at  # a producer opened (and closed) for each try, none for the polls between
    assert trainer.metrics.jobs.labels("retried")._value.get() == len(sent_at)
    assert served(store) == job.adapter_id and len(stub_training) == 1  # registered, trained once
