"""`skuforge serve console` refuses to start without reviewers; `skuforge console` exports to Label Studio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.console.decisions import mask_from_ref
from services.console.labelstudio import rle_to_mask
from services.console.tasks import TaskStore
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.console import flagged_item, pending_envelope


def test_serve_console_needs_reviewers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("SKUFORGE_CONSOLE_USERS", raising=False)
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    assert cli_main(["serve", "console"]) == 2
    assert "SKUFORGE_CONSOLE_USERS is unset" in capsys.readouterr().err
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "alice")  # no password
    assert cli_main(["serve", "console"]) == 2
    assert "SKUFORGE_CONSOLE_USERS" in capsys.readouterr().err


def test_export_labelstudio_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    tasks = TaskStore(tmp_path / "tasks.sqlite3")
    envelope = pending_envelope(flagged_item(store, 0))
    tasks.add_pending(envelope)
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    out = tmp_path / "tasks.json"
    config = tmp_path / "config.xml"
    argv = ["console", "export-labelstudio", "--out", str(out), "--config-out", str(config)]
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["exported"] == 1
    [task] = json.loads(out.read_text())
    assert task["data"]["skuforge_task_id"] == envelope.event_id
    result = task["predictions"][0]["result"][0]
    predicted = mask_from_ref(store, envelope.payload.matted.predicted_mask)
    decoded = rle_to_mask(result["value"]["rle"], result["original_width"], result["original_height"])
    assert np.array_equal(decoded, predicted)
    assert '<BrushLabels name="mask" toName="image">' in config.read_text()
