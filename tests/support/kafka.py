"""Pytest fixtures for the real Kafka broker: one per test session, and fresh topics per test.

``kafka_bootstrap`` uses the broker named by ``SKUFORGE_KAFKA_BOOTSTRAP`` when that is set (for example
one started with ``make kafka-up``); otherwise it starts one :class:`devstack.broker.LocalKafka` in a
temporary directory on free ports and stops it when the session ends. ``new_topic`` creates uniquely
named topics (plus their ``.dlq``) so that tests never share data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaAdminClient

from devstack.broker import LocalKafka, free_ports

BOOTSTRAP_ENV = "SKUFORGE_KAFKA_BOOTSTRAP"
TOPIC_TIMEOUT_MS = 30_000

NewTopic = Callable[..., str]
"""``new_topic(prefix: str = "t", partitions: int = 1) -> str``: create a topic and its ``.dlq``."""


# One admin client per broker for the whole session. Not a fixture of its own: tests/conftest.py imports
# only ``kafka_bootstrap`` and ``new_topic``, and pytest finds fixtures by the names a conftest holds.
_admins: dict[str, KafkaAdminClient] = {}


def session_admin(bootstrap: str) -> KafkaAdminClient:
    """The session's admin client on ``bootstrap`` (created on first use, closed with the session)."""
    admin = _admins.get(bootstrap)
    if admin is None:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            client_id="skuforge-tests-admin",
            request_timeout_ms=TOPIC_TIMEOUT_MS,
        )
        _admins[bootstrap] = admin
    return admin


def _close_admin(bootstrap: str) -> None:
    admin = _admins.pop(bootstrap, None)
    if admin is not None:
        with contextlib.suppress(Exception):
            admin.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real Kafka 4 broker shared by the whole session."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        try:
            yield external
        finally:
            _close_admin(external)
        return
    port, controller_port = free_ports(2)
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller_port,
        heap_mb=512,
    )
    broker.start(timeout_s=120)
    try:
        yield broker.bootstrap
    finally:
        _close_admin(broker.bootstrap)
        broker.stop()


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[NewTopic]:
    """Factory ``new_topic(prefix="t", partitions=1) -> name``.

    Creates ``<prefix>-<uuid>`` with ``partitions`` partitions and ``<name>.dlq`` with one, replication
    factor 1, waits until the broker's metadata shows a leader for every partition, and returns the
    name. The topics are deleted (best effort) when the test ends.
    """
    admin = session_admin(kafka_bootstrap)
    created: list[str] = []

    def create(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        topics = {
            name: {"num_partitions": partitions, "replication_factor": 1},
            f"{name}.dlq": {"num_partitions": 1, "replication_factor": 1},
        }
        admin.create_topics(topics, timeout_ms=TOPIC_TIMEOUT_MS)
        created.extend(topics)
        admin.wait_for_topics(list(topics), timeout_ms=TOPIC_TIMEOUT_MS)
        return name

    yield create

    if created:
        with contextlib.suppress(Exception):
            admin.delete_topics(created, timeout_ms=10_000, raise_errors=False)
