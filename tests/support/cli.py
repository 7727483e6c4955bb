"""``skuforge_into_closed_pipe``: a ``skuforge`` command run with its stdout a pipe whose reader has
gone, as ``| head -1`` leaves it once head has its line. ``served_module_refusal``: a server's module
run as ``python -m`` beside ``skuforge serve``, on a bad setting. ``planted_command``: the source of a
command run through ``shared.commands.run_command``, for a child Python to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def skuforge_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``skuforge *args`` (in a child, on this process's environment) writing into a pipe whose
    read end is closed; its stderr is captured."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "skuforge_cli", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
            env=os.environ,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)


def served_module_refusal(module: str, server: str, **env: str) -> str:
    """What ``python -m module`` says is wrong under the settings ``env``, having checked that it says
    it as ``skuforge serve server`` does: after its own name, exit 2, no traceback."""
    settings = {**os.environ, "SKUFORGE_LOG_FORMAT": "text", **env}

    def started(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *command],
            cwd=Path(__file__).resolve().parents[2],
            env=settings,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    alone = started(module)
    served = started("skuforge_cli", "serve", server)
    assert "Traceback" not in alone.stderr, alone.stderr
    assert alone.returncode == served.returncode == 2, (alone.stderr, served.stderr)
    name = f"python -m {module}: "
    reason = alone.stderr[alone.stderr.index(name) :].removeprefix(name)
    assert f"skuforge serve: {reason}" in served.stderr  # the command's words, after its own name
    return reason


class RunStarted(Exception):
    """The options were accepted and the long work began (``refuse_to_run`` stands in for it)."""


def refuse_to_run(*args: object, **kwargs: object) -> None:
    """A stand-in for a command's long work, monkeypatched in: reached, the options were accepted."""
    raise RunStarted


def refusal_of(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``main(argv)`` says on stderr as it stops with exit 2 (a usage error or a refusal of its
    own), with no traceback, before the long work."""
    assert callable(main)
    try:
        code = main(argv)
    except SystemExit as exited:  # a usage error
        code = exited.code
    assert code == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return str(err)


def planted_command(body: str) -> str:
    """A command whose body is ``body`` (lines indented by four), run through ``run_command``."""
    return (
        "import io, sys\nfrom shared.commands import run_command\n"
        f"def command():\n{body}\n"
        "sys.exit(run_command('skuforge planted', command))\n"
    )
