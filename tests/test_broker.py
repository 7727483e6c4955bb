"""The real single-node Kafka broker: round trips through it, and its data survives a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from devstack.broker import BrokerError, LocalKafka, free_port, free_ports
from devstack.broker import main as broker_main

pytestmark = pytest.mark.kafka


def _produce(bootstrap: str, topic: str, messages: dict[bytes, bytes]) -> set[int]:
    """Send ``key -> value`` with acks=all; return the partitions the broker acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in messages.items()]
        producer.flush(timeout=30)
        return {future.get(timeout=30).partition for future in futures}
    finally:
        producer.close(timeout=10)


def _consume(bootstrap: str, topic: str, expect: int, timeout_s: float = 60) -> dict[bytes, bytes]:
    """Read ``expect`` records from the start of ``topic`` with a fresh consumer group."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-reader",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    received: dict[bytes, bytes] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(received) < expect and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    received[record.key] = record.value
        consumer.commit()
    finally:
        consumer.close()
    return received


def test_produce_and_consume_on_three_partitions(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic("broker", partitions=3)

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([topic, f"{topic}.dlq"])}
    finally:
        admin.close()
    assert len(described[topic]["partitions"]) == 3
    assert len(described[f"{topic}.dlq"]["partitions"]) == 1

    messages = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(60)}
    partitions = _produce(kafka_bootstrap, topic, messages)
    assert len(partitions) > 1, "60 distinct keys should spread over the 3 partitions"

    assert _consume(kafka_bootstrap, topic, expect=len(messages)) == messages


@pytest.mark.slow
def test_restart_on_same_data_dir_keeps_messages(tmp_path: Path) -> None:
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalKafka(tmp_path / "kafka", port=port, controller_port=controller_port, heap_mb=384)
    topic = "restart-keeps-messages"
    messages = {f"k{i}".encode(): f"v{i}".encode() for i in range(25)}
    try:
        broker.start()
        assert broker.formatted
        assert broker.is_running()
        assert broker.pid_path.read_text().strip() == str(broker.pid)
        fresh_start_s = broker.cold_start_s

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            admin.create_topics(
                {topic: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True
            )
        finally:
            admin.close()
        _produce(broker.bootstrap, topic, messages)

        broker.stop()
        assert not broker.is_running()
        assert not broker.pid_path.exists()

        broker.start()
        assert not broker.formatted, "a formatted data dir must not be formatted again"
        assert _consume(broker.bootstrap, topic, expect=len(messages)) == messages
        print(f"cold start: fresh data dir {fresh_start_s:.1f}s, reused {broker.cold_start_s:.1f}s")
    finally:
        broker.stop()
    assert not broker.is_running()


def test_a_foreground_broker_stopped_while_it_starts_leaves_no_jvm(tmp_path: Path) -> None:
    # skuforge up runs `python -m devstack.broker start --foreground` under its supervisor, which sends
    # SIGTERM when it stops (or dies: the parent-death signal). The launcher took SIGTERM only once the
    # broker was ready; before that it died at once, and its JVM, in a session of its own, ran on.
    with _foreground_launcher(tmp_path, stderr=subprocess.PIPE) as (launcher, jvm):
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(jvm):
            time.sleep(0.2)
        assert not _alive(jvm), f"the broker's JVM (pid {jvm}) outlived its stopped launcher"
        assert b"Traceback" not in (launcher.stderr.read() if launcher.stderr else b"")


@contextmanager
def _foreground_launcher(tmp_path: Path, *, stderr: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m devstack.broker start --foreground`` on two free ports, held until its JVM is spawned
    (seconds before the broker is ready); yields the launcher and the JVM's pid, and kills whichever of
    the two is still alive on the way out."""
    port, controller_port = free_ports(2)
    data_dir = tmp_path / "kafka"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.broker",
            "start",
            "--foreground",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--controller-port",
            str(controller_port),
            "--heap-mb",
            "384",
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    broker = LocalKafka(data_dir, port=port, controller_port=controller_port)
    jvm = None
    try:
        deadline = time.monotonic() + 60
        while jvm is None and time.monotonic() < deadline and launcher.poll() is None:
            jvm = broker.pid  # the pid file appears once the JVM is spawned, seconds before it is ready
            time.sleep(0.05)
        assert jvm is not None, "the broker's JVM never started"
        yield launcher, jvm
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if jvm is not None and _alive(jvm):
            os.kill(jvm, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_free_ports_are_distinct_where_free_port_in_a_row_may_repeat() -> None:
    # The Triton fixture took its four ports from four free_port() calls; the OS may hand one out twice,
    # and the generator server now refuses two of its servers on one port.
    ports = free_ports(64)
    assert len(set(ports)) == 64 and all(0 < port < 65536 for port in ports)


@pytest.mark.parametrize("command", ["start", "stop", "status"])
def test_a_data_dir_that_is_a_file_is_a_usage_error_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """`start` said "error: [Errno 17] File exists" (exit 1); `stop` said "no broker running" and then
    "error: [Errno 20] Not a directory" (exit 1); `status` said "not running" (exit 3)."""
    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("mine\n")
    with pytest.raises(SystemExit) as exited:
        broker_main([command, "--data-dir", str(in_the_way)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: --data-dir {in_the_way}: {in_the_way} is a file, not a folder")
    assert not any(line.startswith(("no broker", "not running", "error: [")) for line in err)
    assert in_the_way.read_text() == "mine\n"


def test_a_foreground_broker_whose_launcher_is_killed_outright_leaves_no_jvm(tmp_path: Path) -> None:
    # The supervisor SIGKILLs a launcher that was not ready in time (and the OOM killer may pick it):
    # its JVM, in a session of its own, ran on holding the ports and the pid file, so every restart of
    # the launcher failed with "a broker is already running" for the rest of the stack's life.
    with _foreground_launcher(tmp_path, stderr=subprocess.DEVNULL) as (launcher, jvm):
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(jvm):
            time.sleep(0.2)
        assert not _alive(jvm), f"the broker's JVM (pid {jvm}) outlived its killed launcher"


@pytest.mark.parametrize("port", ["\u00b2", "\u0669\u0660\u0669\u0662", "", "9092x"])
def test_a_listener_port_not_in_ascii_digits_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    """isdigit() took "²" (int() then failed: "invalid literal for int()") and "٩٠٩٢" (read as 9092,
    another broker's port); a port that was no number was skipped, and the default port looked at."""
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    listener = f"PLAINTEXT://127.0.0.1:{port}"
    (data_dir / "server.properties").write_text(f"listeners={listener},CONTROLLER://127.0.0.1:9093\n")
    expected = f"{data_dir / 'server.properties'}: listener {listener!r} has no port in ASCII digits (0-9)"
    with pytest.raises(BrokerError) as raised:
        LocalKafka.from_data_dir(data_dir)
    assert str(raised.value) == expected
    assert broker_main(["status", "--data-dir", str(data_dir)]) == 1
    assert capsys.readouterr().err == f"error: {expected}\n"
