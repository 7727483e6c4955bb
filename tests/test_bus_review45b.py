"""The Publisher on a real broker that authorises by ACL (``acl_broker``): a publish the ACLs refuse
says who was refused and what to grant, not only kafka's "TopicAuthorizationFailedError"."""

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

from schemas.topics import SKU_INGESTED
from shared.bus import Publisher, PublishForbidden
from shared.store import open_store
from tests.support.acl_kafka import TRAINER, AclBroker, sasl_settings
from tests.support.bus import sku_ingested_payloads

pytestmark = pytest.mark.kafka


def test_a_publish_the_acls_refuse_names_the_principal_and_what_to_grant(
    tmp_path: Path, acl_broker: AclBroker
) -> None:
    # Before: "could not publish to <topic>: [Error 29] TopicAuthorizationFailedError: <topic>", kafka's
    # words alone: the operator had to work out which user the service logs in as, and which operations
    # a producer needs, before the ACL could be fixed.
    # The refusal comes back as soon as the broker answers; a shorter wait turned a slow answer (a loaded
    # machine) into a plain KafkaTimeoutError, a TransientError, instead of the refusal this test is about.
    settings = sasl_settings(acl_broker, tmp_path, flush_timeout_s=60.0)
    topic = settings.topic_name(SKU_INGESTED)
    acl_broker.admin.create_topics([NewTopic(topic, 1, 1)])
    on_topic = ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
    created = acl_broker.admin.create_acls(
        [ACL(f"User:{TRAINER}", "*", ACLOperation.WRITE, ACLPermissionType.DENY, on_topic)]
    )
    assert not created["failed"], created
    payload = sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 1)[0]
    publisher = Publisher(settings, "review45b")
    try:
        with pytest.raises(PublishForbidden) as refused:
            publisher.publish(SKU_INGESTED, payload, sku_id=payload.sku.sku_id)
    finally:
        publisher.close()
    reason = str(refused.value)
    assert "TopicAuthorizationFailed" in reason, reason  # kafka's words are kept
    assert f"User:{TRAINER}" in reason and "SKUFORGE_KAFKA_SASL_USERNAME" in reason, reason
    assert f"Describe and Write on topic {topic}" in reason, reason
    assert "IdempotentWrite on the cluster" in reason, reason
