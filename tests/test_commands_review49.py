"""Review 49 of ``shared.commands``: a command that closes stdout's or stderr's bytes when it is done.

A command that writes bytes may close them when it is done (``sys.stdout.buffer.close()``, or the bytes
``sys.stdout.detach()`` gave it, as a reader is told so that the output is complete). run_command's own
flush then went to the closed stream: a ``ValueError`` traceback and status 1, or with the bytes taken by
``detach`` the interpreter's "Exception ignored" (or "lost sys.stderr") and status 120, not the
command's own. Each case runs with Python's streams buffered and unbuffered (``PYTHONUNBUFFERED``: the
bytes below the text are then the raw file), as a user's environment may have either.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import planted_command

ROOT = Path(__file__).resolve().parents[1]


def _run_planted(body: str, *, unbuffered: bool) -> subprocess.CompletedProcess[str]:
    """Runs the planted command ``body`` from the repository root, its stdout and stderr captured."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-c", planted_command(body)],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
        text=True,
    )


# Commands that write 'done' on stdout's bytes, close them, and end with their own status, 3.
_CLOSING_STDOUT = {
    "bytes taken by detach": "    done = sys.stdout.detach()\n    done.write(b'done\\n')\n    done.close()",
    "its buffer": "    sys.stdout.buffer.write(b'done\\n')\n    sys.stdout.buffer.close()",
    "its text": "    print('done')\n    sys.stdout.close()",
}


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("closing", sorted(_CLOSING_STDOUT))
def test_a_command_that_closes_stdout_ends_with_its_own_status(closing: str, unbuffered: bool) -> None:
    done = _run_planted(_CLOSING_STDOUT[closing] + "\n    return 3", unbuffered=unbuffered)
    assert (done.returncode, done.stdout, done.stderr) == (3, "done\n", "")


_CLOSING_STDERR = {
    "bytes taken by detach": (
        "    said = sys.stderr.detach()\n    said.write(b'a warning\\n')\n    said.close()"
    ),
    "its buffer": "    sys.stderr.buffer.write(b'a warning\\n')\n    sys.stderr.buffer.close()",
}


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("closing", sorted(_CLOSING_STDERR))
def test_a_command_that_closes_stderr_ends_with_its_own_status(closing: str, unbuffered: bool) -> None:
    done = _run_planted(_CLOSING_STDERR[closing] + "\n    print('done')\n    return 3", unbuffered=unbuffered)
    assert (done.returncode, done.stdout, done.stderr) == (3, "done\n", "a warning\n")


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("closing", sorted(_CLOSING_STDERR))
def test_a_failure_after_the_command_closed_stderr_keeps_its_exit_status(
    closing: str, unbuffered: bool
) -> None:
    # run_command's line for a bad setting has nowhere to go: dropped, as on a stderr closed by `2>&-`,
    # and the status is still a bad setting's, 2 (it was a ValueError traceback, lost, and status 1 or 120).
    body = (
        _CLOSING_STDERR[closing] + "\n    from shared.config import ConfigError\n"
        "    raise ConfigError('SKUFORGE_PLANTED is not a number')"
    )
    done = _run_planted(body, unbuffered=unbuffered)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "a warning\n")
