"""Review 46 of the local stack (``skuforge up``): ports re-checked as services start, Prometheus's
targets following a moved port, the broker's log read across a roll, and a quiet broker probe."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from devstack.up import kafka_ready
from shared.observability import configure_command_logging


@pytest.fixture
def dropping_listener() -> Iterator[int]:
    """A port that takes connections and drops each at once, as a broker that listens but does not serve
    yet (or restarts) does; its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def drop() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            connection.close()

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_the_broker_probe_stays_quiet_against_a_broker_that_listens_but_does_not_serve(
    dropping_listener: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command filter hides kafka-python's refused connections, not what it logs against a broker
    that takes a connection and drops it ("Connection lost: ... socket disconnected" at ERROR, a dozen
    lines a probe): the probe's own quieting of the `kafka` logger is what keeps them off up's terminal,
    and the logger's level is given back after it."""
    configure_command_logging("INFO")  # as `skuforge up` logs
    assert kafka_ready(f"127.0.0.1:{dropping_listener}") is False
    err = capsys.readouterr().err
    assert "kafka.net" not in err and "socket disconnected" not in err, err
    assert logging.getLogger("kafka").level != logging.CRITICAL
