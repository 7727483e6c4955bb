"""The code as `make lint` holds it: ruff's lint and format check and mypy (code, tests and bench, as
pyproject.toml lists them). CI runs the README's test command only, so without these a merge that
breaks the lint (a test's type error, an unformatted file) passed CI and was found by the next person
to run `make lint`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=570
    )


@pytest.mark.parametrize(
    "args", [("ruff", "check", "."), ("ruff", "format", "--check", ".")], ids=["check", "format"]
)
def test_ruff_passes(args: tuple[str, ...]) -> None:
    done = run(*args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_passes() -> None:
    done = run("mypy")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
