"""A join the broker refuses for the group's sake (full, or not authorised) ends `skuforge run` with one
line naming what to check: before, kafka-python's GroupMaxSizeReachedError (and the authorisation
errors beside it) ended it in a traceback, at every restart of the pod."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.broker import LocalKafka, free_ports
from schemas.topics import SKU_INGESTED
from shared.bus import make_consumer
from skuforge_cli.main import main as cli_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def one_member_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker whose consumer groups take one member (``group.max.size=1``)."""
    port, controller_port = free_ports(2)
    broker = LocalKafka(
        tmp_path_factory.mktemp("one-member-kafka"),
        port=port,
        controller_port=controller_port,
        heap_mb=512,
        extra_properties={"group.max.size": "1"},
    )
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def test_a_join_to_a_full_group_is_one_line_naming_group_max_size(
    one_member_broker: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = isolated_settings(one_member_broker, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    group = f"{settings.consumer_group_prefix}.passthrough"
    first = make_consumer(settings, group, "first-member")
    try:
        first.subscribe([settings.topic_name(SKU_INGESTED)])
        while not first.assignment():  # the group's one place is taken
            first.poll(timeout_ms=500)
        environment = {
            "KAFKA_BOOTSTRAP": one_member_broker,
            "TOPIC_NAMESPACE": settings.topic_namespace,
            "CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
            "STORE_URI": settings.store_uri,
            "METRICS_PORT": "0",
            "GROUP_LAG_INTERVAL_S": "0",
        }
        for name, value in environment.items():
            monkeypatch.setenv(f"SKUFORGE_{name}", value)
        assert cli_main(["run", "passthrough"]) == 2
    finally:
        first.close()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"skuforge run: consumer group {group} is full"), last
    assert "group.max.size" in last
