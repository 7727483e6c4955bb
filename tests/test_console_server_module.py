"""The console's server module, run as the flow names it (``schemas.flow.CONSOLE``)."""

from __future__ import annotations

from tests.support.cli import served_module_refusal


def test_the_console_run_as_a_module_refuses_a_bad_setting_as_skuforge_serve_does() -> None:
    """``python -m services.console.server`` (the flow's module for ``skuforge serve console``) had no
    ``__main__`` block: it imported, did nothing and exited 0, so a process manager running the module
    saw a console that started and ended cleanly. It runs ``main`` in the one-line runner, as the
    generator's server module does: a bad setting is named after the module's name, exit 2."""
    reason = served_module_refusal("services.console.server", "console", SKUFORGE_CONSOLE_PORT="x")
    assert "SKUFORGE_CONSOLE_PORT" in reason
