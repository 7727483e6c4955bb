"""The supervisor keeps every service's exit status, also of those that end around or during a stop."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from devstack.supervisor import SUPERVISOR_ID_ENV, ServiceSpec, Supervisor, processes_with_env


def _service(tmp_path: Path, name: str, body: str) -> ServiceSpec:
    """A Python child that says it is ready (``<name>.ready``) and then runs ``body``."""
    script = tmp_path / f"{name}.py"
    ready = tmp_path / f"{name}.ready"
    script.write_text(f"import pathlib, signal, sys, time\npathlib.Path({str(ready)!r}).touch()\n")
    script.write_text(script.read_text() + textwrap.dedent(body))
    return ServiceSpec(name, [sys.executable, str(script)], tmp_path / f"{name}.log", ready=ready.exists)


def test_a_service_that_died_just_before_the_stop_keeps_its_exit_status(tmp_path: Path) -> None:
    """A stage that crashed (exit 3) after the watch loop's last turn was marked "stopped" by the stop,
    as if it had been stopped: no line said it died, its log did not either, and stack.json's
    last_exit_code stayed null."""
    die = tmp_path / "die"
    crasher = _service(
        tmp_path,
        "crasher",
        f"""
        while not pathlib.Path({str(die)!r}).exists():
            time.sleep(0.05)
        sys.exit(3)
        """,
    )
    lines: list[str] = []
    supervisor = Supervisor([crasher], grace_s=5, report=lines.append)
    try:
        assert supervisor.start()
        process = supervisor["crasher"].process
        assert process is not None
        die.touch()
        assert process.wait(timeout=30) == 3
    finally:
        supervisor.stop()
    state = supervisor["crasher"]
    assert state.last_exit_code == 3
    assert any(line.startswith("crasher: exited with code 3") for line in lines), lines
    assert "skuforge up: crasher exited with code 3" in (tmp_path / "crasher.log").read_text()
    assert processes_with_env(SUPERVISOR_ID_ENV, supervisor.supervisor_id) == []


def test_a_service_that_fails_its_own_shutdown_says_so(tmp_path: Path) -> None:
    """A service that exits 1 on SIGTERM (its last commit or flush failed) was reported as stopped like
    any other, and its exit status was dropped; one that stops cleanly keeps its quiet "stopped"."""
    failing = _service(
        tmp_path,
        "failing",
        """
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        time.sleep(600)
        """,
    )
    clean = _service(
        tmp_path,
        "clean",
        """
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        time.sleep(600)
        """,
    )
    lines: list[str] = []
    supervisor = Supervisor([failing, clean], grace_s=10, report=lines.append)
    try:
        assert supervisor.start()
    finally:
        supervisor.stop()
    assert supervisor["failing"].last_exit_code == 1 and supervisor["failing"].status == "stopped"
    assert supervisor["clean"].last_exit_code == 0 and supervisor["clean"].status == "stopped"
    assert any(line.startswith("failing: exited with code 1 as it stopped") for line in lines), lines
    assert not any(line.startswith("clean: exited") for line in lines), lines
    assert "skuforge up: failing exited with code 1 as it stopped" in (tmp_path / "failing.log").read_text()
