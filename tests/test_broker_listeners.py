"""A broker's handle from its data dir (``status``, ``stop``, ``skuforge up``) takes its client port from
the PLAINTEXT listener, the one ``LocalKafka.connection`` speaks, whatever other listeners the config
has (``extra_properties``: SASL and TLS listeners, as the security tests start one with).

Before: the last listener other than CONTROLLER was taken, so ``status`` printed a TLS listener's
port as the bootstrap, and a config without a PLAINTEXT listener was read as the default port 9092.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.broker import BrokerError, LocalKafka
from devstack.broker import main as broker_main


def test_the_client_port_is_the_plaintext_listeners_among_several(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    listeners = "PLAINTEXT://127.0.0.1:19092,SASL_PLAINTEXT://127.0.0.1:19094,SSL://127.0.0.1:19095"
    (data_dir / "server.properties").write_text(f"listeners={listeners},CONTROLLER://127.0.0.1:19093\n")
    broker = LocalKafka.from_data_dir(data_dir)
    assert (broker.bootstrap, broker.controller_port) == ("127.0.0.1:19092", 19093)


def test_a_config_without_a_plaintext_listener_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    (data_dir / "server.properties").write_text(
        "listeners=SSL://127.0.0.1:19095,CONTROLLER://127.0.0.1:19093\n"
    )
    with pytest.raises(BrokerError, match="no PLAINTEXT listener"):
        LocalKafka.from_data_dir(data_dir)
    assert broker_main(["status", "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data_dir / 'server.properties'}: ") and err.count("\n") == 1, err
