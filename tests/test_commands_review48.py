"""Review 48 of ``shared.commands``: a closed stdout, and stdout's bytes taken from its text (``detach``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import planted_command

ROOT = Path(__file__).resolve().parents[1]


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
    done = _run_planted(["/bin/sh", "-c", 'exec "$0" -c "$1" >&-', sys.executable, planted_command(body)])
    assert (done.returncode, done.stderr) == (3, "a warning\n")


# Commands that take stdout's bytes from its text (``sys.stdout.detach()``) and end with their own status, 3:
# writing those bytes, or wrapping them in a text stream of their own (the idiom for another encoding).
_DETACHING = {
    "bytes taken": "    stdout_bytes = sys.stdout.detach()\n    stdout_bytes.write(b'done\\n')",
    "text of its own": (
        "    sys.stdout = io.TextIOWrapper(sys.stdout.detach(), encoding='latin-1')\n    print('done')"
    ),
}


@pytest.mark.parametrize("detaching", sorted(_DETACHING))
def test_a_command_that_detaches_stdout_keeps_its_exit_status(detaching: str) -> None:
    # run_command's own flush went to the text stream left without its bytes: a ValueError traceback, and
    # the interpreter's last flush of it "Exception ignored ... detached", status 120.
    done = _run_planted([sys.executable, "-c", planted_command(_DETACHING[detaching] + "\n    return 3")])
    assert (done.returncode, done.stdout, done.stderr) == (3, "done\n", "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("detaching", sorted(_DETACHING))
def test_a_command_that_detaches_stdout_onto_a_full_disk_says_so_in_one_line(detaching: str) -> None:
    # The bytes detach gave were stdout's own, not watched: a full disk under them read as any other
    # failure of the command, a traceback ending in "[Errno 28]".
    with Path("/dev/full").open("wb") as full_disk:
        done = _run_planted(
            [sys.executable, "-c", planted_command(_DETACHING[detaching] + "\n    return 3")],
            stdout=full_disk.fileno(),
        )
    assert done.returncode == 1
    assert done.stderr.startswith("skuforge planted: its output could not be written: [Errno 28]")
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_detaching_stdout_twice_fails_as_stdout_itself_does_and_the_command_goes_on() -> None:
    # The second detach is stdout's own ValueError (nothing left to detach), for the command to handle;
    # its status then is its own.
    body = (
        "    stdout_bytes = sys.stdout.detach()\n"
        "    try:\n        sys.stdout.detach()\n"
        "    except ValueError as exc:\n        stdout_bytes.write(f'{exc}\\n'.encode())\n"
        "    return 3"
    )
    done = _run_planted([sys.executable, "-c", planted_command(body)])
    assert (done.returncode, done.stdout, done.stderr) == (3, "underlying buffer has been detached\n", "")


_STDERR_DETACHED = (
    "    stderr_bytes = sys.stderr.detach()\n    stderr_bytes.write(b'a warning\\n')\n"
    "    print('done')\n    return 3"
)


def test_a_command_that_detaches_stderr_keeps_its_exit_status() -> None:
    # run_command's last flush of stderr went to the text stream left without its bytes: a ValueError,
    # "lost sys.stderr" and status 120.
    done = _run_planted([sys.executable, "-c", planted_command(_STDERR_DETACHED)])
    assert (done.returncode, done.stdout, done.stderr) == (3, "done\n", "a warning\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_what_a_command_says_on_detached_stderr_on_a_full_disk_keeps_its_exit_status() -> None:
    # stderr's bytes taken by detach were stderr's own, unguarded: a full disk under them a traceback.
    with Path("/dev/full").open("wb") as full_disk:
        done = subprocess.run(
            [sys.executable, "-c", planted_command(_STDERR_DETACHED)],
            stdout=subprocess.PIPE,
            stderr=full_disk.fileno(),
            cwd=ROOT,
            timeout=120,
            check=False,
            text=True,
        )
    assert (done.returncode, done.stdout) == (3, "done\n")


def test_a_failure_after_the_command_detached_stderr_is_still_said_on_it() -> None:
    # run_command's own line for a bad setting went to the text stream left without its bytes: a
    # ValueError traceback instead of the line, and status 1 instead of 2.
    body = (
        "    stderr_bytes = sys.stderr.detach()\n    stderr_bytes.write(b'a warning\\n')\n"
        "    from shared.config import ConfigError\n    raise ConfigError('SKUFORGE_PLANTED is not a number')"
    )
    done = _run_planted([sys.executable, "-c", planted_command(body)])
    assert (done.returncode, done.stderr) == (
        2,
        "a warning\nskuforge planted: SKUFORGE_PLANTED is not a number\n",
    )
