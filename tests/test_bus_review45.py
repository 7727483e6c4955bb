"""The Publisher on a real broker that authorises by ACL (``acl_broker``): a principal the ACLs deny
Describe on a topic is refused at send()'s metadata wait (kafka-python raises
TopicAuthorizationFailedError there, before any record goes out), which ``shared.bus`` maps to
PublishForbidden, as it does a Write refused by the broker: callers that back off (the LoRA trainer)
tell it from an outage, and the reason names the topic and the refusal."""

from __future__ import annotations

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
from kafka.errors import TopicAuthorizationFailedError

from schemas.topics import SKU_INGESTED
from shared.bus import Publisher, PublishForbidden
from shared.store import open_store
from tests.support.acl_kafka import TRAINER, AclBroker, sasl_settings
from tests.support.bus import sku_ingested_payloads

pytestmark = pytest.mark.kafka


def test_a_publish_to_a_topic_the_acls_hide_is_forbidden_naming_the_topic(
    tmp_path: Path, acl_broker: AclBroker
) -> None:
    # The refusal comes back as soon as the broker answers; a shorter wait turned a slow answer (a loaded
    # machine) into a plain KafkaTimeoutError, a TransientError, instead of the refusal this test is about.
    settings = sasl_settings(acl_broker, tmp_path, flush_timeout_s=60.0)
    topic = settings.topic_name(SKU_INGESTED)
    acl_broker.admin.create_topics([NewTopic(topic, 1, 1)])
    on_topic = ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
    created = acl_broker.admin.create_acls(
        [  # it may neither see the topic (its metadata) nor write to it
            ACL(f"User:{TRAINER}", "*", operation, ACLPermissionType.DENY, on_topic)
            for operation in (ACLOperation.DESCRIBE, ACLOperation.WRITE)
        ]
    )
    assert not created["failed"], created
    payload = sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 1)[0]
    publisher = Publisher(settings, "review45")
    try:
        with pytest.raises(PublishForbidden) as refused:
            publisher.publish(SKU_INGESTED, payload, sku_id=payload.sku.sku_id)
    finally:
        publisher.close()
    # Refused at the metadata wait, not timed out there: a KafkaTimeoutError would be a plain outage.
    assert isinstance(refused.value.__cause__, TopicAuthorizationFailedError), refused.value.__cause__
    reason = str(refused.value)
    assert topic in reason and "TopicAuthorizationFailed" in reason, reason
