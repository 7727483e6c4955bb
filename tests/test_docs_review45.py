"""A new user's walkthrough of README and docs/, held to what the commands really do (review 45).

- `make demo`'s transcript in README shows `skuforge up` starting Kafka in one line (`up  kafka: ready`);
  run as written, the terminal showed a dozen kafka-python `ERROR ... Connection failed: ... ECONNREFUSED`
  and `Bootstrap failed` lines first: up's readiness probe opened an admin client while the JVM was
  still booting and nothing listened on the port yet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import devstack.up
from devstack.broker import LocalKafka
from devstack.up import build_config, build_specs
from shared.observability import configure_command_logging


def test_up_waiting_for_its_booting_broker_prints_no_kafka_connection_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stack's own broker process runs but does not listen yet (a free port: nothing on it).
    monkeypatch.setattr(LocalKafka, "is_running", lambda self: True)
    config = build_config(tmp_path, ports_mode="free")
    kafka = next(spec for spec in build_specs(config) if spec.name == "kafka")
    assert kafka.ready is not None
    configure_command_logging("INFO")  # as `skuforge up` shows log lines on its terminal
    assert not kafka.ready()
    assert not devstack.up.kafka_ready(config.kafka_bootstrap)
    stderr = capsys.readouterr().err
    assert "kafka.net" not in stderr
    assert "ECONNREFUSED" not in stderr
