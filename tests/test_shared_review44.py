"""Review 44 of the small shared modules (``shared.commands``, ``shared.signals``, ``shared.model_cache``,
``shared.dlq``, ``shared.group_lag``): what a user saw go wrong, and now does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("argv", [["flow"], ["config", "--markdown"]], ids=" ".join)
def test_a_command_whose_stdout_cannot_be_written_says_so_in_one_line(argv: list[str]) -> None:
    """``skuforge flow > report.txt`` on a full disk (here ``/dev/full``): before, a traceback of our
    code ending in ``OSError: [Errno 28]``; now one line naming the output and what to do, exit 1."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "skuforge_cli", *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=os.environ,
            text=True,
            timeout=120,
            check=False,
        )
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"skuforge {argv[0]}: its output could not be written"), done.stderr
    assert "No space left on device" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.returncode == 1


def test_an_os_error_that_is_not_stdouts_is_still_raised() -> None:
    """Only a stdout that fails is named so: another OSError (a file the command writes) is not
    taken for it, and goes on to its caller as before."""
    from shared.commands import run_command

    def command() -> int:
        raise OSError(28, "No space left on device", "/elsewhere/out.json")

    with pytest.raises(OSError, match="elsewhere"):
        run_command("skuforge planted", command)
