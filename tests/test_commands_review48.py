"""Review 48 of ``shared.commands``: a closed stdout, and stdout's bytes taken from its text (``detach``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _planted(body: str) -> str:
    """A command whose body is ``body`` (lines indented by four), run through ``run_command``."""
    return (
        "import io, sys\nfrom shared.commands import run_command\n"
        f"def command():\n{body}\n"
        "sys.exit(run_command('skuforge planted', command))\n"
    )


def _run_planted(argv: list[str], stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` (a planted command) from the repository root, its stderr captured."""
    return subprocess.run(
        argv, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT, timeout=120, check=False, text=True
    )


_WRITING = {
    "text": "    print('done')\n    sys.stdout.write('done')\n    sys.stdout.flush()",
    "bytes": "    sys.stdout.buffer.write(b'done')\n    sys.stdout.buffer.flush()",
}


@pytest.mark.parametrize("writing", sorted(_WRITING))
def test_a_command_with_stdout_closed_runs_and_keeps_its_exit_status(writing: str) -> None:
    # `>&-` (or a daemon started with stdout closed): sys.stdout is None, and a command's first print was an
    # AttributeError from inside run_command, a traceback and status 1. Without run_command Python drops
    # what print says there; so does it now, as it does what is said on a closed stderr.
    body = _WRITING[writing] + "\n    print('a warning', file=sys.stderr)\n    return 3"
    done = _run_planted(["/bin/sh", "-c", 'exec "$0" -c "$1" >&-', sys.executable, _planted(body)])
    assert (done.returncode, done.stderr) == (3, "a warning\n")
