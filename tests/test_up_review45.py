"""Review 45 of the local stack (``skuforge up``): what a user whose stack misbehaves is told."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import devstack.up
from devstack.broker import BrokerError, LocalKafka, free_ports
from devstack.supervisor import (
    SUPERVISOR_ID_ENV,
    ServiceSpec,
    Supervisor,
    SupervisorError,
    processes_with_env,
)
from devstack.up import kafka_ready
from shared.observability import configure_command_logging

# What Kafka writes to its stderr as it halts on log dirs it cannot write (a full disk).
HALTED = "[2026-12-07] ERROR Shutdown broker because all log dirs in /x have failed (kafka.log.LogManager)"


def _crasher(tmp_path: Path) -> ServiceSpec:
    """A stage that is ready on its first run until ``die`` exists, then fails as a stage with a bad model
    does: a traceback's last line on stderr, exit 1; every later run fails so at once."""
    runs = tmp_path / "runs"
    die = tmp_path / "die"
    script = tmp_path / "crasher.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import pathlib, sys, time
            runs = pathlib.Path({str(runs)!r})
            n = int(runs.read_text()) if runs.exists() else 0
            runs.write_text(str(n + 1))
            print("loading the matting model", flush=True)
            while n == 0 and not pathlib.Path({str(die)!r}).exists():
                time.sleep(0.05)
            print("OSError: /models/u2net.onnx: no such file", file=sys.stderr, flush=True)
            sys.exit(1)
            """
        )
    )
    return ServiceSpec("crasher", [sys.executable, str(script)], tmp_path / "crasher.log", ready=runs.exists)


def _check_until(supervisor: Supervisor, lines: list[str], count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum("restarting in" in line for line in lines) < count:
        supervisor.check_once()
        time.sleep(0.05)


def test_a_dead_stage_says_its_last_log_lines_once_per_new_ending(tmp_path: Path) -> None:
    """A stage that died once the stack ran said only "exited with code 1 ...; see <log>": why it died
    (the traceback's last line) was in a file the user had to find and open, while its crash loop went on;
    and the log holds every earlier run's lines too. Now its last lines of this run are said under it, and
    a crash loop that ends the same way each time says so in a line, not the same lines every back-off."""
    (tmp_path / "crasher.log").write_text("an earlier run's last line\n")
    lines: list[str] = []
    supervisor = Supervisor(
        [_crasher(tmp_path)], grace_s=2, backoff_initial_s=0.05, backoff_max_s=0.1, report=lines.append
    )
    try:
        assert supervisor.start()
        (tmp_path / "die").touch()
        _check_until(supervisor, lines, 3)
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []
    first = next(index for index, line in enumerate(lines) if "restarting in" in line)
    assert lines[first + 1 : first + 4] == [
        "crasher: its last lines:",
        "crasher|   loading the matting model",
        "crasher|   OSError: /models/u2net.onnx: no such file",
    ], lines
    assert not any("an earlier run" in line for line in lines), lines
    later = [index for index, line in enumerate(lines) if "restarting in" in line][1:3]
    for index in later:
        assert lines[index + 1] == "crasher: its log ends as the last time's", lines
    assert sum("no such file" in line for line in lines) == 1, lines


@pytest.mark.kafka
def test_a_broker_that_dies_once_ready_says_how_and_its_errors_of_this_run(tmp_path: Path) -> None:
    """The launcher `skuforge up` runs said only "kafka exited" when its JVM died (its log dir on a full
    disk, the OOM killer): no exit code, no reason, and the JVM's errors were in <data dir>/broker.out,
    a file the stack's summary never names, among every earlier run's. Now it says the JVM's exit and
    the errors this run of it wrote there."""
    port, controller_port = free_ports(2)
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    (data_dir / "broker.out").write_text("[2026-01-01] ERROR an earlier run's error (kafka.Kafka)\n")
    ports = ["--port", str(port), "--controller-port", str(controller_port), "--heap-mb", "384"]
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.broker",
            "start",
            "--foreground",
            "--data-dir",
            str(data_dir),
            *ports,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    broker = LocalKafka(data_dir, port=port, controller_port=controller_port)
    jvm = None
    try:
        assert launcher.stderr is not None
        said = launcher.stderr.readline()  # "kafka ready in ..." once ready, or why it is not
        assert said.startswith("kafka ready"), said + launcher.stderr.read()
        jvm = broker.pid
        assert jvm is not None
        # What Kafka writes to its stderr (broker.out) as it halts on a log dir it cannot write.
        with (data_dir / "broker.out").open("a") as out:
            out.write(HALTED + "\n")
        os.kill(jvm, signal.SIGKILL)
        assert launcher.wait(timeout=60) == 1
        err = launcher.stderr.read().splitlines()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        if jvm is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(jvm, signal.SIGKILL)
    assert err[-1] == (
        f"kafka: the broker's JVM (pid {jvm}) exited with code -9 (killed by SIGKILL); "
        f"its log: {data_dir / 'logs' / 'server.log'}"
    ), err
    assert HALTED in err
    assert not any("an earlier run" in line for line in err), err


def test_the_brokers_ready_check_is_quiet_while_it_boots(capsys: pytest.CaptureFixture[str]) -> None:
    """While `skuforge up` waited for its broker (15 s here, and again on each restart of it), the ready
    check's admin client printed kafka-python's errors to the terminal four times a second: 30 and more
    lines of "ERROR kafka.net.manager: Connection failed: ... ECONNREFUSED" before "kafka: ready", which
    read as a broken stack. Not ready yet is what the check answers; the supervisor says the rest."""
    configure_command_logging()  # as `skuforge up` logs
    (port,) = free_ports(1)
    assert kafka_ready(f"127.0.0.1:{port}") is False
    logging.getLogger("kafka.net.manager").error("a broker's error outside the probe still shows")
    err = capsys.readouterr().err
    assert "ECONNREFUSED" not in err and "Unable to bootstrap" not in err, err
    assert "a broker's error outside the probe still shows" in err


def test_ports_auto_says_which_service_it_moved_off_a_taken_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ports auto` gave the console a free port in place of its last run's (the one its users have
    bookmarked) when something else held that one, and said nothing: the summary showed the new address
    among ten lines, and the bookmark opened whatever held the old port (another stack's console)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bookmarked = holder.getsockname()[1]
        (tmp_path / "ports.json").write_text(json.dumps({"console": bookmarked}))
        monkeypatch.setattr(devstack.up.Supervisor, "run", lambda self, on_ready=None: 0)
        monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
        try:
            code = devstack.up.main(["--workdir", str(tmp_path), "--kafka-bootstrap", "127.0.0.1:9"])
        finally:
            os.close(devstack.up._held_locks.pop())
    assert code == 0
    console = json.loads((tmp_path / "stack.json").read_text())["ports"]["console"]
    assert console != bookmarked
    out = capsys.readouterr().out
    assert f"up  console: port {bookmarked} is taken; using {console} for this run only" in out, out


def test_a_stage_that_fails_to_start_shows_its_lines_of_this_run_only(tmp_path: Path) -> None:
    """A start-up that failed ("matting exited with code 1 while starting; last lines of matting.log")
    showed the log's last 20 lines, and `var/up/logs` keeps every run's: a run that wrote one line showed
    the last run's traceback above it, read as this run's reason."""
    log = tmp_path / "matting.log"
    log.write_text("Traceback (most recent call last):\nRuntimeError: last week's failure\n")
    script = tmp_path / "matting.py"
    script.write_text("import sys\nsys.exit('OSError: [Errno 98] Address already in use')\n")
    lines: list[str] = []
    never_ready = ServiceSpec("matting", [sys.executable, str(script)], log, ready=lambda: False)
    supervisor = Supervisor([never_ready], report=lines.append)
    try:
        with pytest.raises(SupervisorError) as failed:
            supervisor.start()
    finally:
        supervisor.stop()
    said = str(failed.value)
    assert said.startswith("matting exited with code 1 while starting; last lines of ")
    assert "OSError: [Errno 98] Address already in use" in said
    assert "last week's failure" not in said, said


@pytest.mark.kafka
def test_a_broker_that_fails_to_start_shows_its_logs_of_this_start_only(tmp_path: Path) -> None:
    """The broker's start failure ended with the tails of broker.out and server.log, which keep every
    earlier run's lines: a start that failed before it logged much showed the last run's errors as its own."""
    port, controller_port = free_ports(2)
    broker = LocalKafka(tmp_path / "kafka", port=port, controller_port=controller_port, heap_mb=256)
    broker.log_path.parent.mkdir(parents=True)
    broker.out_path.write_text("[2026-01-01] ERROR an earlier run's error (kafka.Kafka)\n")
    broker.log_path.write_text("[2026-01-01] ERROR an earlier run's server line (kafka.server)\n")
    with pytest.raises(BrokerError) as raised:
        broker.start(timeout_s=0.01)
    said = str(raised.value)
    assert "not ready in time" in said and f"--- {broker.log_path} (tail) ---" in said
    assert "an earlier run's" not in said, said
    assert not broker.is_running()
