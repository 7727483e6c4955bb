"""``skuforge_into_closed_pipe``: a ``skuforge`` command run with its stdout a pipe whose reader has
gone, as ``| head -1`` leaves it once head has its line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
