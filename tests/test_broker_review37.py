"""The tests' own broker: how long it may take to start, and what a start that fails says.

120 s was a fixed limit, and ran out on a loaded two-core machine starting several brokers at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.broker import BrokerError, LocalKafka, free_ports
from tests.support.kafka import DEFAULT_START_LIMIT_S, START_LIMIT_ENV, broker_start_limit_s, start_broker


def test_the_broker_start_limit_is_240_s_unless_the_variable_sets_another() -> None:
    assert DEFAULT_START_LIMIT_S == 240
    assert broker_start_limit_s(None) == 240
    assert broker_start_limit_s(" ") == 240
    assert broker_start_limit_s("600") == 600
    assert broker_start_limit_s("7.5") == 7.5


@pytest.mark.parametrize("raw", ["0", "-5", "soon", "inf", "nan"])
def test_a_start_limit_that_is_no_positive_number_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=f"{START_LIMIT_ENV}='{raw}': give the broker's start limit"):
        broker_start_limit_s(raw)


@pytest.mark.kafka
def test_a_broker_not_started_in_time_names_the_limit_its_variable_and_the_log_tail(tmp_path: Path) -> None:
    port, controller_port = free_ports(2)
    broker = LocalKafka(tmp_path / "kafka", port=port, controller_port=controller_port, heap_mb=256)
    with pytest.raises(BrokerError) as raised:
        start_broker(broker, 0.01)
    message = str(raised.value)
    assert message.startswith(f"the tests' Kafka broker did not start (limit 0.01 s, {START_LIMIT_ENV}): ")
    assert "not ready in time" in message
    assert f"--- {broker.log_path} (tail) ---" in message
    assert not broker.is_running()
