"""A real Kafka broker that authorises by ACL (KRaft's StandardAuthorizer, SASL/PLAIN), one per test
module that asks for it (``acl_broker``): a super user on its PLAINTEXT listener makes topics and ACLs;
the principal ``TRAINER`` logs in on its SASL_PLAINTEXT listener (``sasl_settings``), where the ACLs
decide what it may do. Where no ACL names a topic, everyone may use it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kafka.admin import KafkaAdminClient

from devstack.broker import LocalKafka, free_ports
from shared.config import Settings
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.kafka import broker_start_limit_s, start_broker

TRAINER, PASSWORD = "trainer", "trainer-secret"


class AclBroker(NamedTuple):
    """A broker authorising by ACL: ``admin`` on its PLAINTEXT listener (a super user), ``sasl`` the
    listener the principal ``TRAINER`` connects to."""

    admin: KafkaAdminClient
    sasl: str


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclBroker]:
    folder = tmp_path_factory.mktemp("acl-kafka")
    plain, controller, sasl = free_ports(3)
    jaas = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{TRAINER}="{PASSWORD}";'
    properties = {
        "listeners": f"PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl},"
        f"CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",  # the PLAINTEXT listeners: the admin and the controller
        "allow.everyone.if.no.acl.found": "true",
    }
    broker = LocalKafka(
        folder / "broker", port=plain, controller_port=controller, extra_properties=properties
    )
    start_broker(broker, broker_start_limit_s(None))
    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{plain}")
    try:
        yield AclBroker(admin, f"127.0.0.1:{sasl}")
    finally:
        admin.close()
        broker.stop()


def sasl_settings(broker: AclBroker, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings that connect as ``TRAINER`` to ``broker``'s SASL listener, in a topic namespace of
    their own (``isolated_settings``)."""
    return isolated_settings(
        broker.sasl,
        file_store_uri(tmp_path / "kafka-store"),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username=TRAINER,
        kafka_sasl_password=PASSWORD,
        **overrides,
    )
