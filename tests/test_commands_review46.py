"""Review 46 of ``shared.commands``: a command's own lines on a stderr that cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Commands that say something on stderr and then end with their own status, 3: a line (a warning), and
# a line's start (progress), written at once all the same (stderr is write-through).
_SAYING = {
    "a line": "print('skuforge planted: a warning', file=sys.stderr)",
    "a line's start": "sys.stderr.write('progress 50%')",
}


def _command_saying(what: str) -> str:
    return (
        "import sys\nfrom shared.commands import run_command\n"
        f"def command():\n    {_SAYING[what]}\n    print('done')\n    return 3\n"
        "sys.exit(run_command('skuforge planted', command))\n"
    )


def _run_planted(argv: list[str], stderr: int | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` (a planted command) from the repository root, its stdout captured; ``stderr`` as
    given (``None``: this process's own)."""
    return subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, timeout=120, check=False, text=True
    )


@contextmanager
def _full_disk() -> Iterator[int]:
    """A descriptor whose every write fails with ENOSPC (``2> log`` on a full disk)."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _reader_gone() -> Iterator[int]:
    """The write end of a pipe whose reader has gone (``2>&1 | head -1`` once head is done): EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("what", sorted(_SAYING))
@pytest.mark.parametrize("broken", [_full_disk, _reader_gone], ids=["full disk", "reader gone"])
def test_what_a_command_says_on_a_stderr_that_cannot_be_written_keeps_its_exit_status(
    broken: object, what: str
) -> None:
    # run_command kept its own lines from raising, but a command's print(..., file=sys.stderr) on a full
    # disk or a closed pipe raised out of it: a command that did its work ended with status 1 and a
    # traceback nobody could read.
    with broken() as stderr:  # type: ignore[operator]
        done = _run_planted([sys.executable, "-c", _command_saying(what)], stderr=stderr)
    assert done.returncode == 3
    assert done.stdout == "done\n"


@pytest.mark.parametrize("what", sorted(_SAYING))
def test_what_a_command_says_on_a_closed_stderr_keeps_its_exit_status(what: str) -> None:
    # `2>&-`: sys.stderr is None, and print(file=None) printed the warning on stdout, into the command's
    # output; sys.stderr.write was an AttributeError, status 1.
    done = _run_planted(["/bin/sh", "-c", 'exec "$0" -c "$1" 2>&-', sys.executable, _command_saying(what)])
    assert done.returncode == 3
    assert done.stdout == "done\n"
