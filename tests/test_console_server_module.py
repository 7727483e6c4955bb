"""The console's server module, run as the flow names it (``schemas.flow.CONSOLE``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_console_run_as_a_module_refuses_a_bad_setting_as_skuforge_serve_does() -> None:
    """``python -m services.console.server`` (the flow's module for ``skuforge serve console``) had no
    ``__main__`` block: it imported, did nothing and exited 0, so a process manager running the module
    saw a console that started and ended cleanly. It runs ``main`` in the one-line runner, as the
    generator's server module does: a bad setting is named after the module's name, exit 2."""
    env = {**os.environ, "SKUFORGE_CONSOLE_PORT": "x", "SKUFORGE_LOG_FORMAT": "text"}

    def started(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *command], cwd=REPO, env=env, capture_output=True, text=True, check=False
        )

    module = started("services.console.server")
    command = started("skuforge_cli", "serve", "console")
    assert "Traceback" not in module.stderr, module.stderr
    assert module.returncode == command.returncode == 2
    name = "python -m services.console.server: "
    reason = module.stderr[module.stderr.index(name) :].removeprefix(name)
    assert "SKUFORGE_CONSOLE_PORT" in reason
    assert f"skuforge serve: {reason}" in command.stderr
