"""The console after a review of its Label Studio hand-off and its pages: an export the import cannot
read is refused, not taken as "nothing annotated"; a mistyped --reason is refused, not exported as
nothing; a task withdrawn while held is not shown as its reviewer's; a password the login form cannot
take is refused where it is set."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.console.config import ConsoleSettings, parse_users
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    decide_as_alice,
    flagged_item,
    flagged_parts_fixture,
    login,
    pending_envelope,
    use_cli_on,
)

parts = flagged_parts_fixture(2)


def test_a_json_min_export_is_refused_not_imported_as_nothing_annotated(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Label Studio's JSON-MIN export is a list of objects too, the task's data and its annotation's
    choices flattened into each: every task read as "no annotation", nothing was recorded, exit 0."""
    task_id = parts.tasks.query()[0].task_id
    json_min = [
        {
            "image": "https://images.example/x.png",
            "skuforge_task_id": task_id,
            "id": 1,
            "decision": "reject",
            "reason": "blurry",
            "annotator": 7,
            "annotation_id": 1,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "lead_time": 3.2,
        }
    ]
    export = tmp_path / "export-min.json"
    export.write_text(json.dumps(json_min))
    use_cli_on(parts, monkeypatch)
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(export)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "task 0 has no 'data'" in err and "JSON-MIN" in err
    assert parts.tasks.get(task_id).state == "pending"


def test_export_refuses_a_reason_no_task_was_flagged_with(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A mistyped --reason wrote an empty task list and exited 0 (a mistyped --sku is refused)."""
    use_cli_on(parts, monkeypatch)
    out = tmp_path / "tasks.json"
    assert cli_main(["console", "export-labelstudio", "--out", str(out), "--reason", "iou_below"]) == 2
    err = capsys.readouterr().err
    assert "--reason iou_below: no task" in err and "iou_below_threshold" in err
    assert not out.exists()
    assert cli_main(["console", "export-labelstudio", "--out", str(out), "--reason", "product_drift"]) == 0
    assert [task["data"]["reasons"] for task in json.loads(out.read_text())] == [
        "iou_below_threshold, product_drift"
    ]


def test_a_task_withdrawn_while_held_is_not_shown_as_the_reviewers(parts: ConsoleParts) -> None:
    """The state read "withdrawn (alice)" on the queue and the item page: the name of the reviewer who
    held it when its owner withdrew the photo, as if she had closed it. A closed task names who closed
    it (the withdrawal's "skuforge", as its audit entry does); a held one its holder, as before."""
    held, decided = [task.task_id for task in parts.tasks.query()]
    parts.tasks.claim(held, "alice", 60.0)
    photo = parts.tasks.get(held).pending.matted.generated.reference_photo_id
    assert parts.tasks.withdraw_photos({"SKU-00001": {photo}}) == [held, decided]
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client, "bob")
    item = client.get(f"/tasks/{held}").text
    assert '<dd id="state">withdrawn (skuforge)</dd>' in item
    queue = client.get("/", params={"state": "withdrawn"}).text
    assert "withdrawn (alice)" not in queue and queue.count("<td>withdrawn (skuforge)</td>") == 2


def test_a_held_or_decided_task_still_names_its_reviewer(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    for index in range(2):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index)))
    held, decided = [task.task_id for task in parts.tasks.query()]
    parts.tasks.claim(held, "alice", 60.0)
    decide_as_alice(parts, decided, "reject", "other")
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client, "bob")
    assert '<dd id="state">claimed (alice)</dd>' in client.get(f"/tasks/{held}").text
    assert '<dd id="state">rejected (alice)</dd>' in client.get(f"/tasks/{decided}").text
    queue = client.get("/", params={"state": "all"}).text
    assert "<td>claimed (alice)</td>" in queue and "<td>rejected (alice)</td>" in queue


def test_a_password_the_login_form_cannot_take_is_refused_where_it_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The login form takes 256 characters (the browser cuts the field there, the server answers a
    longer one with a 422), yet hash-password hashed a longer password and SKUFORGE_CONSOLE_USERS took
    one: a reviewer who could never log in, told only "wrong name or password"."""
    parts = build_console(tmp_path)
    form = TestClient(app_for(parts), base_url="http://console.test").get("/login").text
    field = re.search(r'<input name="password"[^>]*maxlength="(\d+)"', form)
    assert field
    most = int(field.group(1))
    longest, too_long = "p" * most, "p" * (most + 1)
    monkeypatch.setattr("sys.stdin", io.StringIO(too_long + "\n"))
    assert cli_main(["console", "hash-password"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"takes at most {most}" in captured.err
    with pytest.raises(ValueError, match=f"reviewer 'alice': the password is {most + 1} characters"):
        parse_users(f"alice:{too_long}")
    # The longest the form takes works, hashed or plain.
    monkeypatch.setattr("sys.stdin", io.StringIO(longest + "\n"))
    assert cli_main(["console", "hash-password"]) == 0
    entry = capsys.readouterr().out.strip()
    parts.console.console = ConsoleSettings(
        console_users=f"alice:{entry},bob:{longest}", console_db_path=str(parts.tasks.path)
    )
    for reviewer in ("alice", "bob"):
        login(TestClient(app_for(parts), base_url="http://console.test"), reviewer, longest)


def _choice(decision: str, *, by: int, at: str, reason: str = "") -> dict[str, object]:
    result: list[dict[str, object]] = [
        {"type": "choices", "from_name": "decision", "value": {"choices": [decision]}}
    ]
    if reason:
        result.append({"type": "textarea", "from_name": "reason", "value": {"text": [reason]}})
    return {"completed_by": by, "created_at": at, "updated_at": at, "result": result}


def test_annotators_who_disagree_are_not_resolved_silently_and_the_latest_is_by_time(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two annotators on one task, one approving and one rejecting: the import took whichever
    annotation's time text sorted last, without a word. It now skips the task with the reason (exit 1:
    nothing is recorded until someone settles it). Annotators who agree still give the latest
    annotation, by time: "…00Z" sorts after "…00.500Z" as text, but is half a second earlier."""
    disputed, agreed = [task.task_id for task in parts.tasks.query()]
    export = [
        {
            "data": {"skuforge_task_id": disputed},
            "annotations": [
                _choice("approve", by=7, at="2026-01-01T10:00:00Z"),
                _choice("reject", by=8, at="2026-01-01T09:00:00Z", reason="not the product"),
            ],
        },
        {
            "data": {"skuforge_task_id": agreed},
            "annotations": [
                _choice("reject", by=7, at="2026-01-01T10:00:00.500000Z", reason="blurry"),
                _choice("reject", by=8, at="2026-01-01T10:00:00Z", reason="dented"),
            ],
        },
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    use_cli_on(parts, monkeypatch)

    assert cli_main(["console", "import-labelstudio", "--no-publish", str(path)]) == 1

    out, err = capsys.readouterr()
    assert "annotators disagree" in out and "1 annotation(s) skipped" in err
    assert parts.tasks.get(disputed).state == "pending"
    rejected = parts.tasks.get(agreed)
    assert (rejected.state, rejected.decided_by) == ("rejected", "labelstudio:7")
    resolved = parts.tasks.outbox(agreed)
    assert resolved is not None and resolved.payload.reject_reason == "blurry"
