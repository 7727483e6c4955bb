"""Review 49 follow-ups: the generated shape module names a --matting-model path with spaces whole; the
console's API shows a stored decision's object URIs escaped, as it shows everything else it stored; a
LoRA trainer's poll with the general adapter published and current writes no lease."""

from __future__ import annotations

import ast
import json
import shlex
import sqlite3
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.lora_trainer.lease import LEASES
from shared.captioning import fit_shape
from shared.observability import escape_control_characters
from shared.store import FileStore
from tests.support.captioning import TINY_FIT_SHAPE
from tests.support.console import (
    app_for,
    build_console,
    flagged_item,
    login,
    pending_envelope,
    rejected_then_stored_as_before_review48,
)
from tests.support.lora import gate_accepted, model_folder, record_accepted_event, trainer_on


def test_a_matting_model_path_with_spaces_is_not_broken_across_docstring_lines(tmp_path: Path) -> None:
    """``textwrap.fill`` broke the Command line at a space inside the quoted path (and dropped the
    spaces it broke at), so the docstring's command no longer read back as the path. Now the path
    stands whole on one line and the command reads back as the same words."""
    model = "/models/" + "a" * 60 + "  two  spaces " + "b" * 60 + " end.onnx"
    out = tmp_path / "tree.py"
    assert fit_shape.main([*TINY_FIT_SHAPE, "--matting-model", model, "--out", str(out)]) == 0
    doc = ast.get_docstring(ast.parse(out.read_text(encoding="utf-8")), clean=False)
    assert doc is not None
    assert any(shlex.quote(model) in line for line in doc.splitlines())
    command = doc.split("Command: ", 1)[1].split("\nData: ", 1)[0].replace("\n    ", " ")
    words = shlex.split(command)
    assert words[words.index("--matting-model") + 1] == model


@pytest.mark.parametrize("char", ["\u202e", "\x85", "\x1b"], ids=["bidi", "c1_next_line", "escape"])
def test_a_decision_stored_before_review_48_shows_its_object_uris_escaped_in_the_api(
    tmp_path: Path, char: str
) -> None:
    """``resolved`` in GET /api/tasks/ID was the stored decision as read (leniently, as stored), so an
    object's URI in it carried a raw U+202E or C1 control in the API's JSON, which reorders or breaks
    what a script prints; the item page shows it escaped. Now the API shows it escaped the same way."""
    parts = build_console(tmp_path)
    # As a console before review 48 stored it: the character in an object's uri, in the task and its decision.
    stored = f"{json.dumps(char)[1:-1]}gnp.png"  # as the JSON column holds it
    task = rejected_then_stored_as_before_review48(parts, tmp_path, stored)
    with TestClient(app_for(parts)) as client:
        login(client)
        answer = client.get(f"/api/tasks/{task.task_id}")
    assert answer.status_code == 200, answer.text
    assert char not in answer.text
    uri = answer.json()["resolved"]["pending"]["matted"]["generated"]["expected_mask"]["uri"]
    assert f"{escape_control_characters(char)}gnp.png" in uri


class LeaseWritesStore(FileStore):
    """A file store that keeps the lease keys written (taken, renewed or taken over), in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lease_writes: list[str] = []

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if key.startswith(LEASES):
            self.lease_writes.append(key)
        super()._write(key, data, content_type)

    def _write_new(self, key: str, data: bytes, content_type: str) -> bool:
        if key.startswith(LEASES):
            self.lease_writes.append(key)
        return super()._write_new(key, data, content_type)


def test_a_poll_with_the_general_adapter_published_and_current_takes_no_lease(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """A guard, not a fix: review 49 feared the general job ran under its lease at every poll (every 5 s)
    with nothing to do (a lease written and deleted, a heartbeat thread, two trainers meeting on it each
    poll). It is not planned at all once published and current (``general.json`` records what it
    covered), so no lease is written; this keeps it so."""
    store = LeaseWritesStore(tmp_path / "store")
    for variant in range(4):
        record_accepted_event(store, gate_accepted(store, variant))
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=4
    )
    trainer.publish = lambda event: None
    [event] = trainer.run_pending()
    assert event.kind == "general"
    assert store.lease_writes  # trained under its lease
    store.lease_writes.clear()
    trained = len(stub_training)
    for _ in range(3):
        assert trainer.run_pending() == []
    assert len(stub_training) == trained
    assert store.lease_writes == []
    assert list(store.list_keys(LEASES)) == []


def test_an_audit_entry_stored_with_a_bidi_control_is_shown_escaped_in_the_api(tmp_path: Path) -> None:
    """The item page shows an audit entry's detail and reviewer escaped (one stored before the console
    refused such text in a reason); GET /api/tasks/ID gave them as stored, a raw U+202E in the JSON."""
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    [task] = parts.tasks.query()
    with sqlite3.connect(tmp_path / "console" / "tasks.sqlite3") as db:
        db.execute("UPDATE audit SET detail = ?, reviewer = ?", ("torn \u202elebal", "ann\u202e"))
    with TestClient(app_for(parts)) as client:
        login(client)
        answer = client.get(f"/api/tasks/{task.task_id}")
    assert answer.status_code == 200, answer.text
    assert "\u202e" not in answer.text
    [entry] = answer.json()["audit"]
    assert entry["detail"] == "torn \\u202elebal" and entry["reviewer"] == "ann\\u202e"
