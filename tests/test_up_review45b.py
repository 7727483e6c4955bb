"""Review 45b of the local stack (``skuforge up``): what a dead stage says, and which ports it keeps."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

import devstack.up
from devstack.prometheus import stack_prometheus
from devstack.supervisor import (
    SUPERVISOR_ID_ENV,
    ServiceSpec,
    StartRefused,
    Supervisor,
    SupervisorError,
    http_ok,
    processes_with_env,
    readable_log_line,
)
from devstack.up import build_config, build_specs, metrics_urls
from schemas.flow import PIPELINE
from shared.config import load_settings
from shared.observability import JsonFormatter


def _json_record(message: str, *, exc: BaseException | None = None, **fields: object) -> str:
    """A line as a stage writes it to its log (``configure_logging``'s JSON)."""
    record = logging.LogRecord("services.matting.stage", logging.ERROR, __file__, 1, message, None, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.__dict__.update(fields)
    return JsonFormatter().format(record)


def _raised() -> BaseException:
    def load_model() -> None:
        raise OSError("/models/u2net.onnx: no such file \x1b[2J")

    try:
        load_model()
    except OSError as exc:
        return exc
    raise AssertionError("not raised")


def test_a_dead_stages_json_lines_are_said_as_readable_lines(tmp_path: Path) -> None:
    """Stages log JSON, so each line said under a dead stage was a whole record: 300 characters and more
    of quotes and keys, and a logged traceback one line of `\\n` escapes hundreds of characters long. Now
    each record is said as time, level, logger and message, its traceback's lines indented under it (the
    last ones, where the error is), its control characters escaped; a line that is no JSON as it was."""
    exc = _raised()
    record = _json_record("the matting model cannot be loaded", exc=exc, sku_id="sku-1")
    script = tmp_path / "stage.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            print("plain text, not JSON", flush=True)
            print({record!r}, file=sys.stderr, flush=True)
            sys.exit(1)
            """
        )
    )
    lines: list[str] = []
    spec = ServiceSpec("matting", [sys.executable, str(script)], tmp_path / "matting.log", ready=lambda: True)
    supervisor = Supervisor([spec], grace_s=2, backoff_initial_s=30, report=lines.append)
    try:
        assert supervisor.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("restarting in" in line for line in lines):
            supervisor.check_once()
            time.sleep(0.05)
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []
    said = lines[lines.index("matting: its last lines:") + 1 :]
    entry = json.loads(record)
    assert said[0] == "matting|   plain text, not JSON", said
    assert said[1] == (
        f"matting|   {entry['time']} ERROR services.matting.stage: the matting model cannot be loaded "
        "sku_id=sku-1"
    ), said
    traceback_lines = said[2:]
    assert traceback_lines, said
    assert all(line.startswith("matting|       ") for line in traceback_lines), said
    assert traceback_lines[-1] == "matting|       OSError: /models/u2net.onnx: no such file \\x1b[2J", said
    assert any("in load_model" in line for line in traceback_lines), said
    assert not any("{" in line for line in said), said


def test_a_long_traceback_is_said_by_its_last_lines_and_other_lines_as_they_are() -> None:
    """A traceback 40 frames deep was 80 lines under the stage's name; its error is at its end."""
    trace = "Traceback (most recent call last):\n" + "".join(f'  File "x.py", line {n}\n' for n in range(40))
    record = json.dumps(
        {"time": "t", "level": "ERROR", "logger": "l", "message": "m", "exc_info": trace + "E"}
    )
    said = readable_log_line(record, traceback_lines=3)
    assert said == [
        "t ERROR l: m",
        "    (39 earlier lines of its traceback are in the log)",
        '      File "x.py", line 38',
        '      File "x.py", line 39',
        "    E",
    ], said
    for line in ("42", '"text"', '{"no": "message"}', "[1, 2]", "--- 2026 skuforge up: starting x"):
        assert readable_log_line(line) == [line]


def test_a_crash_loop_of_json_records_that_differ_only_in_time_is_said_once(tmp_path: Path) -> None:
    """A crash loop that ends the same way each time says so in a line, not the same lines each back-off;
    but a stage's every record carries its time, so no two runs of a stage ever ended "the same", and its
    lines were said again at each restart, burying what else the stack said."""
    script = tmp_path / "stage.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, pathlib, sys, time
            while not pathlib.Path(sys.argv[1]).exists():  # the first run: alive until the test says
                time.sleep(0.01)
            record = {"time": repr(time.time()), "level": "ERROR", "logger": "services.gate"}
            record["message"] = "boom"
            print(json.dumps(record), file=sys.stderr, flush=True)
            sys.exit(1)
            """
        )
    )
    lines: list[str] = []
    die = tmp_path / "die"
    spec = ServiceSpec(
        "gate", [sys.executable, str(script), str(die)], tmp_path / "gate.log", ready=lambda: True
    )
    supervisor = Supervisor([spec], grace_s=2, backoff_initial_s=0.05, backoff_max_s=0.1, report=lines.append)
    try:
        # Started, and ready, before its first death: a run that died at once failed start() itself when it
        # died before the first ready check, now and then on a loaded machine.
        assert supervisor.start()
        die.touch()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum("restarting in" in line for line in lines) < 3:
            supervisor.check_once()
            time.sleep(0.05)
    finally:
        supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []
    assert sum(line.endswith("ERROR services.gate: boom") for line in lines) == 1, lines
    assert sum(line == "gate: its log ends as the last time's" for line in lines) >= 2, lines


def test_ports_auto_keeps_the_bookmarked_console_port_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ports auto` moved the console off its bookmarked port while something held it briefly, and
    saved the free port it moved to in ports.json: every later run used that one, and the console never
    came back to the address its users had bookmarked. Now the moved port is this run's only; ports.json
    keeps the bookmarked one, and the next run, that port free again, is back on it."""
    monkeypatch.setattr(devstack.up.Supervisor, "run", lambda self, on_ready=None: 0)
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    argv = ["--workdir", str(tmp_path), "--kafka-bootstrap", "127.0.0.1:9"]

    def up() -> dict[str, int]:
        try:
            assert devstack.up.main(argv) == 0
        finally:
            os.close(devstack.up._held_locks.pop())
        return dict(json.loads((tmp_path / "stack.json").read_text())["ports"])

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bookmarked = holder.getsockname()[1]
        (tmp_path / "ports.json").write_text(json.dumps({"console": bookmarked}))
        moved = up()["console"]
        assert moved != bookmarked
        assert json.loads((tmp_path / "ports.json").read_text())["console"] == bookmarked
        out = capsys.readouterr().out
        assert (
            f"up  console: port {bookmarked} is taken; using {moved} for this run only "
            f"(ports.json keeps {bookmarked} for the next)\n"
        ) in out, out
    assert up()["console"] == bookmarked
    assert "console: port" not in capsys.readouterr().out


# A stage as far as `skuforge up` sees it: /readyz, and /metrics naming a partition of each topic of its
# argv, served on SKUFORGE_METRICS_PORT; a port taken is the stage's "Address already in use", exit 1.
FAKE_STAGE = """
import http.server, os, sys
lag = "".join(f'skuforge_consumer_lag_messages{{topic="{t}",partition="0"}} 0\\n' for t in sys.argv[1:])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = lag.encode() if self.path == "/metrics" else b"ok"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["SKUFORGE_METRICS_PORT"])), Handler).serve_forever()
"""


def test_a_stage_metrics_port_taken_after_the_ports_were_chosen_moves_that_stage_at_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage's metrics port was checked only when the stack's ports were chosen, minutes before the
    stage starts: something that took it meanwhile made the stage exit "Address already in use" as it
    started, and the whole start-up stopped. With --ports auto the port is checked again as the stage
    starts; a taken one is said and replaced, and its ready check, stack.json's metrics address and
    Prometheus's scrape target follow it."""
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    config = build_config(tmp_path, ports_mode="auto", kafka_bootstrap="127.0.0.1:9", with_trainer=False)
    matting = next(spec for spec in build_specs(config) if spec.name == "matting")
    settings = load_settings(**config.settings())
    topics = [
        settings.topic_name(topic) for topic in next(s for s in PIPELINE if s.name == "matting").consumes
    ]
    script = tmp_path / "stage.py"
    script.write_text(FAKE_STAGE)
    stage = dataclasses.replace(matting, argv=[sys.executable, str(script), *topics])
    lines: list[str] = []
    chosen = config.ports["matting"]
    monkeypatch.setenv("SKUFORGE_PROMETHEUS_BIN", sys.executable)  # found, never run here
    prometheus = stack_prometheus(tmp_path / "prometheus", config.ports, prefer_default_port=False)
    scraper = devstack.up.prometheus_service(config, prometheus, report=lines.append)
    assert f"127.0.0.1:{chosen}" in prometheus.config_path.read_text()
    with socket.socket() as taken_meanwhile:
        taken_meanwhile.bind(("127.0.0.1", chosen))
        taken_meanwhile.listen()
        supervisor = Supervisor([stage], grace_s=5, report=lines.append)
        try:
            assert supervisor.start(), lines
            assert supervisor["matting"].status == "ready"
            moved = config.ports["matting"]
            assert moved != chosen
            assert http_ok(f"http://127.0.0.1:{moved}/readyz")()
            assert metrics_urls(config)["matting"] == f"http://127.0.0.1:{moved}/metrics"
            assert scraper.argv_at_start is not None
            scraper.argv_at_start()  # Prometheus starts last, after every stage
            targets = prometheus.config_path.read_text()
            assert f"127.0.0.1:{moved}" in targets and f"127.0.0.1:{chosen}" not in targets, targets
        finally:
            supervisor.stop()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []
    out = capsys.readouterr().out
    assert f"up  matting: its metrics port {chosen} was taken since it was chosen; using {moved}\n" in out


def test_with_ports_default_a_stage_metrics_port_taken_meanwhile_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--ports default` keeps the documented ports: one taken after they were checked is not moved, but
    said with the option that would move it; and the stage is not started to fail on it in its log
    (review 46: it was, after this line)."""
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "demo:pw")
    config = build_config(tmp_path, ports_mode="free", kafka_bootstrap="127.0.0.1:9", with_trainer=False)
    config.ports_mode = "default"  # as if the documented ports were free when checked
    gate = next(spec for spec in build_specs(config) if spec.name == "gate")
    with socket.socket() as taken_meanwhile:
        taken_meanwhile.bind(("127.0.0.1", config.ports["gate"]))
        taken_meanwhile.listen()
        port = config.ports["gate"]
        assert gate.env_at_start is not None
        with pytest.raises(StartRefused) as refused:
            gate.env_at_start()
    assert config.ports["gate"] == port
    assert str(refused.value) == (
        f"gate: its metrics port {port} was taken since the ports were checked, so it cannot start; "
        f"stop what holds it (ss -ltnp 'sport = :{port}') or run with --ports auto"
    )


def test_a_stage_that_fails_to_start_says_its_json_lines_as_readable_lines(tmp_path: Path) -> None:
    """`start-up failed: matting exited with code 1 while starting; last lines of ...` showed each of the
    stage's JSON records whole, its traceback one line of `\\n` escapes, as a dead stage's once did."""
    record = _json_record("the matting model cannot be loaded", exc=_raised())
    script = tmp_path / "stage.py"
    script.write_text(f"import sys\nprint({record!r}, file=sys.stderr)\nsys.exit(1)\n")
    spec = ServiceSpec(
        "matting", [sys.executable, str(script)], tmp_path / "matting.log", ready=lambda: False
    )
    reported: list[str] = []
    supervisor = Supervisor([spec], report=reported.append)
    try:
        with pytest.raises(SupervisorError) as failed:
            supervisor.start()
    finally:
        supervisor.stop()
    said = str(failed.value).splitlines()
    assert (
        said[1]
        == f"{json.loads(record)['time']} ERROR services.matting.stage: the matting model cannot be loaded"
    )
    assert said[-2] == "    OSError: /models/u2net.onnx: no such file \\x1b[2J", said
    assert said[-1].endswith("skuforge up: matting exited with code 1 while starting"), said
