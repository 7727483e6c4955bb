"""`skuforge console`'s hint to the local stack's table reads the stack's own paths from its stack.json.

Every test runs in its own, empty folder (``defaults``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.console.tasks import TaskStore
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.console import console_defaults_fixture, flagged_item, pending_envelope

defaults = console_defaults_fixture()


def test_the_hint_names_the_table_and_store_the_stack_json_names(
    defaults: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stack started with SKUFORGE_CONSOLE_DB_PATH and SKUFORGE_STORE_URI of its own kept its table and
    store there (stack.json says so), but the hint named the defaults under var/up, or none at all."""
    store = FileStore(defaults / "elsewhere" / "store")
    table = defaults / "elsewhere" / "tasks.sqlite3"
    TaskStore(table).add_pending(pending_envelope(flagged_item(store, 0)))
    (defaults / "var" / "up").mkdir(parents=True)
    (defaults / "var" / "up" / "stack.json").write_text(
        json.dumps({"state": "running", "console_db": str(table), "store_uri": store.base_uri})
    )
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert f"SKUFORGE_CONSOLE_DB_PATH={table}" in err
    assert "var/up/console" not in err

    out = defaults / "tasks.json"
    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"SKUFORGE_CONSOLE_DB_PATH={table} SKUFORGE_STORE_URI={store.base_uri}" in err


def test_a_damaged_stack_json_leaves_the_hint_to_the_default_paths(
    defaults: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = FileStore(defaults / "var" / "up" / "store")
    TaskStore(defaults / "var" / "up" / "console" / "tasks.sqlite3").add_pending(
        pending_envelope(flagged_item(store, 0))
    )
    (defaults / "var" / "up" / "stack.json").write_text('{"console_db": 7, "store_uri": ')
    assert cli_main(["console", "export-labelstudio", "--out", str(defaults / "t.json")]) == 2
    err = capsys.readouterr().err
    assert (
        "SKUFORGE_CONSOLE_DB_PATH=var/up/console/tasks.sqlite3 SKUFORGE_STORE_URI=file://var/up/store" in err
    )
