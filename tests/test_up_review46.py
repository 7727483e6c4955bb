"""Review 46 of the local stack (``skuforge up``): ports re-checked as services start, Prometheus's
targets following a moved port, the broker's log read across a roll, and a quiet broker probe."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.broker import LocalKafka, LogMark
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


def _log_lines(prefix: str, count: int) -> str:
    return "".join(f"[2026-12-07] INFO {prefix} line {n} (kafka.server.KafkaServer)\n" for n in range(count))


def test_the_brokers_lines_of_this_start_are_read_across_a_roll_of_its_server_log(tmp_path: Path) -> None:
    """A failed start said the lines server.log got from this start on: read from the size the file had
    as the start began. log4j rolls it at 20 MB (server.log becomes server.log.1, a new server.log
    begins): once the new file had grown past that size, the read began there, the new file's first
    lines and the rolled file's end (this start's first lines) were left out. Now a roll is seen (the
    file is another one) and the lines are read from the mark in the rolled file, then the new one whole."""
    kafka = LocalKafka(tmp_path / "kafka")
    log = kafka.log_path
    log.parent.mkdir(parents=True)
    log.write_text(_log_lines("an earlier run's", 50))
    kafka._server_log_mark = LogMark.at_end(log)  # as start() takes it
    with log.open("a") as server_log:
        server_log.write(_log_lines("before the roll", 3))
    log.rename(log.with_name("server.log.1"))  # log4j's roll
    log.write_text(_log_lines("after the roll", 60))  # past the mark's offset in the old file
    tails = kafka._log_tails()
    said = tails.split(f"--- {log} (tail) ---\n", 1)[1].splitlines()
    assert "an earlier run's" not in tails
    assert said[-1] == "[2026-12-07] INFO after the roll line 59 (kafka.server.KafkaServer)"
    assert len(said) == 40  # the last 40 of 63 lines, every one of them this start's


def test_this_starts_lines_of_a_log_rolled_twice_and_of_one_cut_short(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(_log_lines("earlier", 5))
    mark = LogMark.at_end(log)
    with log.open("a") as server_log:
        server_log.write(_log_lines("first", 2))
    log.rename(tmp_path / "server.log.1")
    log.write_text(_log_lines("second", 2))
    (tmp_path / "server.log.1").rename(tmp_path / "server.log.2")
    log.rename(tmp_path / "server.log.1")
    log.write_text(_log_lines("third", 20))
    said = mark.lines_since()
    assert [line.split(" ")[2] for line in said] == ["first"] * 2 + ["second"] * 2 + ["third"] * 20
    # The same file, cut shorter than the mark (truncated in place): read from its start.
    cut = tmp_path / "cut.log"
    cut.write_text(_log_lines("earlier", 5))
    cut_mark = LogMark.at_end(cut)
    cut.write_text(_log_lines("new", 1))
    assert [line.split(" ")[2] for line in cut_mark.lines_since()] == ["new"]
