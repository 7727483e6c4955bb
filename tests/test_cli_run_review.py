"""`skuforge run <stage>` with no broker: one line naming the bootstrap and what to do, exit 1."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer

from devstack.broker import free_port
from skuforge_cli.main import main as cli_main


@pytest.mark.parametrize("client", [KafkaConsumer, KafkaProducer], ids=["consumer", "producer"])
def test_run_with_kafka_down_is_one_line_and_exit_1(
    client: type,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_signal_handlers: None,
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("SKUFORGE_METRICS_PORT", "0")
    monkeypatch.setenv("SKUFORGE_GROUP_LAG_INTERVAL_S", "0")
    # kafka-python waits 30 s for a first broker; the test need not.
    monkeypatch.setitem(KafkaConsumer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 300)
    monkeypatch.setitem(KafkaProducer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 300)
    consumer = _StubConsumer()
    if client is KafkaProducer:  # the consumer was made, the producer finds no broker: close the consumer
        monkeypatch.setattr("shared.runtime.make_consumer", lambda *_a, **_k: consumer)
    assert cli_main(["run", "passthrough"]) == 1
    err = capsys.readouterr().err
    assert f"skuforge run: cannot reach Kafka at {bootstrap} (" in err
    assert "is it running? (`make kafka-up`, or set SKUFORGE_KAFKA_BOOTSTRAP)" in err
    assert "Traceback" not in err
    assert consumer.closed == (client is KafkaProducer)


class _StubConsumer:
    closed = False

    def close(self, autocommit: bool = True) -> None:
        self.closed = True
