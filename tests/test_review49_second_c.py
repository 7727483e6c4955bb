"""Review 49, second opinion: what today's commits on the console's commands left open.

Every test runs in its own folder (``monkeypatch.chdir(tmp_path)``): the repository's ``var/`` is never
written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.console.tasks import TaskStore
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.console import flagged_item, pending_envelope

DEFAULT_HINT = "SKUFORGE_CONSOLE_DB_PATH=var/up/console/tasks.sqlite3 SKUFORGE_STORE_URI=file://var/up/store"


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``tmp_path`` as the current folder, holding a local stack's task table and store at their
    defaults (``var/up/``); its ``stack.json`` is each test's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKUFORGE_CONSOLE_DB_PATH", raising=False)
    monkeypatch.delenv("SKUFORGE_STORE_URI", raising=False)
    store = FileStore(tmp_path / "var" / "up" / "store")
    TaskStore(tmp_path / "var" / "up" / "console" / "tasks.sqlite3").add_pending(
        pending_envelope(flagged_item(store, 0))
    )
    return tmp_path / "var" / "up" / "stack.json"


def test_a_stack_json_nested_too_deeply_leaves_the_hint_to_the_defaults(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """json.loads refuses nesting deeper than Python's stack with a RecursionError, no ValueError: the
    refusal of a command without a table ended in a traceback instead of naming the table."""
    stack.write_text("[" * 100_000)
    assert cli_main(["console", "export-labelstudio", "--out", "tasks.json"]) == 2
    err = capsys.readouterr().err
    assert "no task table at" in err and DEFAULT_HINT in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "console_db",
    ["x" * 300, "/" + "deep/" * 1000 + "tasks.sqlite3"],
    ids=["name_too_long", "path_too_long"],
)
def test_a_stack_json_naming_a_path_the_system_refuses_gives_no_hint(
    stack: Path, capsys: pytest.CaptureFixture[str], console_db: str
) -> None:
    """Path.is_file raises for a name or path longer than the system takes (ENAMETOOLONG): a stack.json
    naming one (it is a file anyone may edit) ended the refusal in a traceback. There is no table there,
    so no hint to it."""
    stack.write_text(json.dumps({"console_db": console_db, "store_uri": "file://var/up/store"}))
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert "no task table at" in err
    assert "SKUFORGE_CONSOLE_DB_PATH=" not in err.split("; set SKUFORGE_CONSOLE_DB_PATH", 1)[1]
