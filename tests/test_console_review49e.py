"""`serve console` start-up: its logging is set up before it opens anything, and a task table it makes
new is logged so.

Each test runs the console module in its own folder (``tmp_path``): the repository's ``var/`` is never
written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _serve_console_until_its_metrics_port_is_refused(folder: Path) -> subprocess.CompletedProcess[str]:
    """``python -m services.console.server`` in ``folder``, its metrics port held by this test: it opens
    its store and its task table, then stops with exit 2 at the port, before reaching Kafka."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SKUFORGE_LOG_FORMAT": "json",
            "SKUFORGE_LOG_LEVEL": "INFO",
            "SKUFORGE_CONSOLE_USERS": "reviewer:a-long-password",
            "SKUFORGE_CONSOLE_DB_PATH": str(folder / "console" / "tasks.sqlite3"),
            "SKUFORGE_STORE_URI": f"file://{folder / 'store'}",
            "SKUFORGE_METRICS_HOST": "127.0.0.1",
            "SKUFORGE_CONSOLE_METRICS_PORT": str(held.getsockname()[1]),
        }
        return subprocess.run(
            [sys.executable, "-m", "services.console.server"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_serve_console_logs_the_new_empty_task_table_it_makes(tmp_path: Path) -> None:
    """It made a new, empty task table without a word (and set up its logging only after opening it):
    a console started with a mistyped SKUFORGE_CONSOLE_DB_PATH showed an empty queue, nothing said why."""
    done = _serve_console_until_its_metrics_port_is_refused(tmp_path)
    assert done.returncode == 2, done.stderr
    assert (tmp_path / "console" / "tasks.sqlite3").is_file()
    made = [line for line in _json_lines(done.stderr) if "new, empty task table" in str(line.get("message"))]
    assert len(made) == 1, done.stderr
    assert str(tmp_path / "console" / "tasks.sqlite3") in str(made[0]["message"])
    assert "SKUFORGE_CONSOLE_DB_PATH" in str(made[0]["message"])

    # Started again on the table it made: opened, not made, so not said.
    again = _serve_console_until_its_metrics_port_is_refused(tmp_path)
    assert again.returncode == 2, again.stderr
    assert "new, empty task table" not in again.stderr
