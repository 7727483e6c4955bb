"""Review 45 of the local stack (``skuforge up``): what a user whose stack misbehaves is told."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

from devstack.supervisor import SUPERVISOR_ID_ENV, ServiceSpec, Supervisor, processes_with_env


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
