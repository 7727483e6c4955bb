"""The LoRA trainer, an ``adapter.published`` the broker's ACLs refuse (the trainer's principal may not
write to the topic): kafka-python's idempotent producer stops for good on it, as on a record over the
topic's limit, so the trainer backs off alike instead of opening a new producer at every poll.

Training is stubbed (``stub_training``); the publication goes to a real broker that authorises by ACL
(KRaft's StandardAuthorizer, SASL/PLAIN), through the real ``kafka_publisher``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from prometheus_client import CollectorRegistry

from schemas.events import AdapterPublished
from schemas.topics import ADAPTER_PUBLISHED
from services.lora_trainer.stage import LoraTrainerMetrics, PublicationFailed, kafka_publisher
from tests.support.acl_kafka import TRAINER, AclBroker, sasl_settings
from tests.support.lora import one_series, served

pytestmark = pytest.mark.kafka


def test_a_publication_the_acl_refuses_is_tried_again_on_a_growing_interval(
    tmp_path: Path, stub_training: list[Path], acl_broker: AclBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL denying the trainer Write on adapter.published stops its producer for good, as a record
    over the topic's limit does; but the publisher raised a plain TransientError for it, so the trainer
    sent at every poll (every 5 s), opening and closing a new producer each time, for as long as the ACL
    stayed. Now it backs off as for the topic's limit (2**(n-1) polls skipped after the n-th refusal), and
    the log names the ACL, not an outage the next poll gets past."""
    store, trainer_at = one_series(tmp_path)
    trainer = trainer_at(4)
    # The refusal comes back as soon as the broker answers; a shorter wait turned a slow answer (a loaded
    # machine) into a plain KafkaTimeoutError, a TransientError, instead of the refusal this test is about.
    shared = sasl_settings(acl_broker, tmp_path, flush_timeout_s=60.0)
    topic = shared.topic_name(ADAPTER_PUBLISHED)
    acl_broker.admin.create_topics([NewTopic(topic, 1, 1)])
    on_topic = ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
    created = acl_broker.admin.create_acls(
        [  # it may see the topic (so its producer sends), not write to it
            ACL(f"User:{TRAINER}", "*", ACLOperation.DESCRIBE, ACLPermissionType.ALLOW, on_topic),
            ACL(f"User:{TRAINER}", "*", ACLOperation.WRITE, ACLPermissionType.DENY, on_topic),
        ]
    )
    assert not created["failed"], created
    publish = kafka_publisher(shared)
    sent_at: list[int] = []
    poll = 0

    def counted(event: AdapterPublished) -> None:
        sent_at.append(poll)
        publish(event)

    trainer.publish = counted
    closed_at: list[int] = []
    refusals: list[str] = []
    try:
        with caplog.at_level(logging.ERROR):
            for poll in range(1, 12):
                caplog.clear()
                trainer.poll()
                assert isinstance(trainer.last_error, PublicationFailed), trainer.last_error
                assert "TopicAuthorizationFailed" in trainer.last_error.reason
                closed_at += [poll for r in caplog.records if "stopped for good" in r.getMessage()]
                refusals += [r.getMessage() for r in caplog.records if r.name == "skuforge.lora-trainer"]
    finally:
        publish.close()
    assert sent_at == [1, 3, 6, 11]
    assert closed_at == sent_at  # a producer opened (and closed) for each try, none for the polls between
    assert trainer.metrics.jobs.labels("retried")._value.get() == len(sent_at)
    assert len(refusals) == len(sent_at)
    for message in refusals:
        assert "ACL" in message and "next poll publishes it" not in message, message
    assert served(store) == trainer.plan()[0].adapter_id  # registered (served), trained once
    assert len(stub_training) == 1


def test_the_retried_outcome_says_a_refused_publication_counts_only_its_tries() -> None:
    """The help said `retried` is a poll tried again "at the next"; since the back-off, a publication the
    topic or an ACL refuses for good is tried (and counted) only on its growing interval."""
    help_text = LoraTrainerMetrics(CollectorRegistry()).jobs._documentation

    assert "growing interval" in help_text and "not counted" in help_text, help_text
