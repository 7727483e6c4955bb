"""Pytest fixtures for the real Kafka broker: one per test session, and fresh topics per test.

``kafka_bootstrap`` uses the broker named by ``SKUFORGE_KAFKA_BOOTSTRAP`` when that is set (for example
one started with ``make kafka-up``); otherwise it starts one :class:`devstack.broker.LocalKafka` in a
temporary directory on free ports and stops it when the session ends; it has
``SKUFORGE_TEST_BROKER_START_S`` seconds (240 by default) to start. ``new_topic`` creates uniquely named
topics (plus their ``.dlq``) so that tests never share data.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaAdminClient

from devstack.broker import BrokerError, LocalKafka, free_ports

BOOTSTRAP_ENV = "SKUFORGE_KAFKA_BOOTSTRAP"
TOPIC_TIMEOUT_MS = 30_000
# 120 s ran out on a loaded two-core machine starting several brokers (one per pytest run) at once.
START_LIMIT_ENV = "SKUFORGE_TEST_BROKER_START_S"
DEFAULT_START_LIMIT_S = 240.0

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


def broker_start_limit_s(raw: str | None) -> float:
    """The seconds the session's broker has to start: ``raw``, ``SKUFORGE_TEST_BROKER_START_S``'s value,
    else 240."""
    if raw is None or not raw.strip():
        return DEFAULT_START_LIMIT_S
    try:
        limit_s = float(raw)
    except ValueError:
        limit_s = math.nan
    if not (limit_s > 0 and math.isfinite(limit_s)):
        raise ValueError(f"{START_LIMIT_ENV}={raw!r}: give the broker's start limit in seconds, above 0")
    return limit_s


def start_broker(broker: LocalKafka, limit_s: float) -> None:
    """``broker.start`` within ``limit_s``; its error (which ends with the broker log's tail) names the
    limit and the variable that sets it."""
    try:
        broker.start(timeout_s=limit_s)
    except BrokerError as exc:
        raise BrokerError(
            f"the tests' Kafka broker did not start (limit {limit_s:g} s, {START_LIMIT_ENV}): {exc}"
        ) from exc


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
    start_limit_s = broker_start_limit_s(os.environ.get("SKUFORGE_TEST_BROKER_START_S"))
    port, controller_port = free_ports(2)
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller_port,
        heap_mb=512,
    )
    start_broker(broker, start_limit_s)
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
