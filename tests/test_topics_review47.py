"""Review 47 of `skuforge topics create`'s checks, on a real broker that authorises by ACL."""

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

from shared.bus import create_topic_names
from tests.support.acl_kafka import TRAINER, AclBroker, sasl_settings

pytestmark = pytest.mark.kafka


def test_a_topic_whose_configs_the_principal_may_not_read_is_said_to_be_unchecked(
    tmp_path: Path, acl_broker: AclBroker
) -> None:
    """kafka-python 3.0.12 drops the per-topic error code of a DescribeConfigs answer: a principal
    without DescribeConfigs on a topic got it back as a topic with no configs, and the
    min.insync.replicas check was skipped without a word, the topic passing as at the settings."""
    settings = sasl_settings(acl_broker, tmp_path, topic_replication=3)
    topic = f"{settings.topic_namespace}configs-hidden"
    acl_broker.admin.create_topics([NewTopic(topic, 1, 1)])
    on_topic = ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
    created = acl_broker.admin.create_acls(
        [
            ACL(f"User:{TRAINER}", "*", ACLOperation.ALL, ACLPermissionType.ALLOW, on_topic),
            ACL(f"User:{TRAINER}", "*", ACLOperation.DESCRIBE_CONFIGS, ACLPermissionType.DENY, on_topic),
        ]
    )
    assert not created["failed"], created

    report = create_topic_names(settings, [topic], partitions=1)

    assert [shortfall.name for shortfall in report.short] == [topic]  # its replication, 1 of 3
    # Reported, not only logged (review 48): `skuforge topics create` exits 3 for it.
    assert list(report.unchecked) == [topic]
    assert report.unchecked[topic].startswith("TopicAuthorizationFailed"), report.unchecked


def test_a_topic_gone_before_its_configs_were_read_is_not_said_to_need_describe_configs(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic deleted between being listed and described answers UnknownTopicOrPartition: it has
    nothing to compare (as its missing configs always meant), and was told to grant DescribeConfigs."""
    from kafka import KafkaAdminClient

    from shared.bus import _low_configs

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="skuforge-review47")
    try:
        with caplog.at_level(logging.WARNING, logger="shared.bus"):
            low, unchecked = _low_configs(admin, ["skuforge-review47-never-made"], 3)
    finally:
        admin.close()
    assert low == {} and unchecked == {}
    assert "DescribeConfigs" not in caplog.text and "was not made" not in caplog.text
