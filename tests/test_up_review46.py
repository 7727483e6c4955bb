"""Review 46 of the local stack (``skuforge up``): ports re-checked as services start, Prometheus's
targets following a moved port, the broker's log read across a roll, and a quiet broker probe."""

from __future__ import annotations

import dataclasses
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import devstack.up
from devstack.broker import LocalKafka, LogMark
from devstack.prometheus import stack_prometheus
from devstack.supervisor import ServiceSpec, StartRefused, Supervisor
from devstack.up import StackConfig, build_config, build_specs, kafka_ready, prometheus_service
from shared.observability import configure_command_logging
from tests.support.polling import wait_for


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


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StackConfig:
    """A stack's config on free ports, with a running broker of someone else's (never asked here)."""
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    return build_config(tmp_path, ports_mode="free", kafka_bootstrap="127.0.0.1:9", with_trainer=False)


def _spec(config: StackConfig, name: str) -> ServiceSpec:
    return next(spec for spec in build_specs(config) if spec.name == name)


@pytest.mark.parametrize(
    ("service", "port_name", "said"),
    [
        ("console", "console_metrics", "its metrics port"),
        ("console", "console", "its port"),
        ("triton", "triton_grpc", "its gRPC port"),
        ("triton", "generator_server_metrics", "the generator server's metrics port"),
    ],
)
def test_a_console_or_triton_port_taken_after_the_ports_were_chosen_refuses_the_start_naming_it(
    stack: StackConfig, tmp_path: Path, service: str, port_name: str, said: str
) -> None:
    """The console's and Triton's ports were checked only as the stack's ports were chosen, minutes before
    they start: one taken meanwhile made the service exit "Address already in use" in its log (Triton once
    its models had loaded), and the start-up failed with its log's last lines. Now the start is refused
    before the process runs, naming the port, its entry in ports.json and what to do. Not moved, as a
    stage's metrics port is: every service's settings carry these."""
    port = stack.ports[port_name]
    spec = dataclasses.replace(_spec(stack, service), argv=[sys.executable, "-c", "raise SystemExit(3)"])
    reported: list[str] = []
    supervisor = Supervisor([spec], grace_s=5, report=reported.append)
    with socket.socket() as taken_meanwhile:
        taken_meanwhile.bind(("127.0.0.1", port))
        taken_meanwhile.listen()
        assert supervisor.run() == 1
    assert supervisor[service].process is None  # never started
    log = spec.log_path.read_text()
    assert " skuforge up: starting " not in log, log  # its log says why, not that it started
    assert log.endswith(f"skuforge up: not started: {reported[0].removeprefix('start-up failed: ')}\n"), log
    assert stack.ports[port_name] == port
    assert reported[0] == (
        f"start-up failed: {service}: {said} {port} ({port_name} in ports.json) was taken since the ports "
        f"were chosen, so it cannot start; stop what holds it (ss -ltnp 'sport = :{port}'), or start "
        "skuforge up again: it gives a taken port a free one"
    ), reported


def test_under_ports_default_the_refusal_says_to_run_with_ports_auto(stack: StackConfig) -> None:
    stack.ports_mode = "default"  # as if the documented ports were free when checked
    console = _spec(stack, "console")
    assert console.env_at_start is not None
    assert console.env_at_start() == {}  # free: nothing said, nothing set
    ports = [stack.ports["console"], stack.ports["console_metrics"]]
    with socket.socket() as one, socket.socket() as other:
        for holder, port in zip((one, other), ports, strict=True):
            holder.bind(("127.0.0.1", port))
            holder.listen()
        with pytest.raises(StartRefused) as refused:
            console.env_at_start()
    assert str(refused.value) == (
        f"console: its port {ports[0]} (console in ports.json), its metrics port {ports[1]} (console_metrics "
        f"in ports.json) were taken since the ports were chosen, so it cannot start; stop what holds it "
        f"(ss -ltnp 'sport = :{ports[0]}'), or run with --ports auto: it gives a taken port a free one"
    )


def test_a_service_refused_as_it_restarts_is_tried_again_after_its_back_off(tmp_path: Path) -> None:
    """Once the stack runs, a service whose port is taken as it restarts is said and tried again (the port
    may be freed), as one that cannot be run is; the refusal does not go out of the watch loop."""
    refusing = threading.Event()

    def ports_free() -> dict[str, str]:
        if refusing.is_set():
            raise StartRefused("console: its port 8087 (console in ports.json) was taken ...")
        return {}

    spec = ServiceSpec(
        "console",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        tmp_path / "console.log",
        env_at_start=ports_free,
    )
    reported: list[str] = []
    supervisor = Supervisor([spec], grace_s=5, backoff_initial_s=0.01, report=reported.append)
    try:
        assert supervisor.start()
        refusing.set()
        console = supervisor["console"]
        assert console.process is not None
        console.process.kill()

        def backing_off() -> bool:
            supervisor.check_once()
            return console.status == "backing-off"

        wait_for("the console to back off", backing_off)
        console.next_start_at = 0.0
        supervisor.check_once()
        assert console.status == "backing-off"
        assert reported[-1].startswith(
            "console: its port 8087 (console in ports.json) was taken ...; trying again in "
        )
    finally:
        supervisor.stop()


def test_prometheus_scrapes_a_stage_at_the_port_it_moved_to_after_prometheus_started(
    stack: StackConfig, tmp_path: Path, prometheus_bin: str
) -> None:
    """`--with-prometheus` wrote its scrape targets only as Prometheus started, the stack's last service: a
    stage restarted once the stack ran, its metrics port taken meanwhile, moved to a free port, and was
    scraped at its old one (down, or another process's /metrics). Now the targets are written again and
    the real Prometheus reloaded: its matting target is the moved port."""
    stack.ports_mode = "auto"
    prometheus = stack_prometheus(tmp_path / "prometheus", stack.ports, prefer_default_port=False)
    said: list[str] = []
    scraper = prometheus_service(stack, prometheus, report=said.append)
    matting = _spec(stack, "matting")
    supervisor = Supervisor([scraper], grace_s=5, report=said.append)
    chosen = stack.ports["matting"]

    def matting_target() -> str:
        targets = prometheus.api("targets")["activeTargets"]
        matting = (target["scrapeUrl"] for target in targets if target["labels"]["job"] == "matting")
        return next(matting, "")  # "": not discovered yet

    try:
        assert supervisor.start(), said
        assert wait_for("prometheus's targets", matting_target) == f"http://127.0.0.1:{chosen}/metrics"
        with socket.socket() as taken_meanwhile:
            taken_meanwhile.bind(("127.0.0.1", chosen))
            taken_meanwhile.listen()
            assert matting.env_at_start is not None
            moved = int(matting.env_at_start()["SKUFORGE_METRICS_PORT"])  # matting restarts
        assert moved != chosen
        wanted = f"http://127.0.0.1:{moved}/metrics"
        wait_for("the moved matting target", lambda: matting_target() == wanted)
    finally:
        supervisor.stop()
    assert not any("not reloaded" in line for line in said), said


def test_the_stack_is_recorded_ready_only_once_its_summary_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stack.json turned "ready" before the summary (addresses, the console's login, how to feed it) was
    printed: a tool that waits for the state and then reads up's output (tests/test_up.py, a demo's
    wrapper) found no login line in it, now and then. Now the summary is printed first."""
    happened: list[str] = []
    write_state = devstack.up.write_state

    def recording_state(config: StackConfig, supervisor: Supervisor, state: str) -> None:
        happened.append(f"state {state}")
        write_state(config, supervisor, state)

    def run(self: Supervisor, on_ready: Callable[[], None] | None = None) -> int:
        assert on_ready is not None
        on_ready()
        return 0

    monkeypatch.setattr(devstack.up, "write_state", recording_state)
    monkeypatch.setattr(devstack.up, "_say", lambda line: happened.append(f"said {line}"))
    monkeypatch.setattr(devstack.up.Supervisor, "run", run)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    assert devstack.up.main(["--workdir", str(tmp_path), "--kafka-bootstrap", "127.0.0.1:9"]) == 0
    ready = happened.index("state ready")
    assert happened.index("said Ctrl-C stops everything.") < ready, happened
    assert any(line.startswith("said   console ") for line in happened[:ready]), happened


def test_targets_that_cannot_be_written_or_reloaded_are_said_and_the_stage_starts_on_its_moved_port(
    stack: StackConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following a moved port is Prometheus's business: its config file unwritable (a full disk) went out
    of the moved stage's start as that stage's failure ("matting: cannot run python"). Now it is said, and
    the stage starts on its new port."""
    monkeypatch.setenv("SKUFORGE_PROMETHEUS_BIN", sys.executable)  # found, never run here
    stack.ports_mode = "auto"
    prometheus = stack_prometheus(tmp_path / "prometheus", stack.ports, prefer_default_port=False)
    said: list[str] = []
    scraper = prometheus_service(stack, prometheus, report=said.append)
    assert scraper.argv_at_start is not None
    scraper.argv_at_start()  # as it starts, the stack's last service
    prometheus.config_path.unlink()
    prometheus.config_path.mkdir()  # no file can be written there
    matting = _spec(stack, "matting")
    chosen = stack.ports["matting"]
    with socket.socket() as taken_meanwhile:
        taken_meanwhile.bind(("127.0.0.1", chosen))
        taken_meanwhile.listen()
        assert matting.env_at_start is not None
        moved = matting.env_at_start()["SKUFORGE_METRICS_PORT"]
    assert moved == str(stack.ports["matting"]) != str(chosen)
    assert len(said) == 1 and said[0].startswith("prometheus: its scrape targets were not reloaded ("), said
    assert said[0].endswith("); it reads them as it restarts"), said
