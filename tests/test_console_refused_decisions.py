"""A decision the broker refused for good, as people meet it: an operator lists and resends it with
``skuforge console refused`` / ``resend`` (before, only by clearing ``refused_reason`` by hand in
SQLite), and the item page says it was refused, and why (before, it read as sent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    decide_as_alice,
    decided,
    flagged_item,
    login,
    pending_envelope,
    use_cli_on,
)

REASON = "MessageSizeTooLargeError: <b>over</b> max.message.bytes & more"


def _refused(parts: ConsoleParts, count: int) -> list[str]:
    """``count`` decisions recorded and refused by the broker (as the relay marks them)."""
    task_ids = decided(parts, count)
    for task_id in task_ids:
        outbox = parts.tasks.outbox(task_id)
        assert outbox is not None
        parts.tasks.mark_refused(outbox.event_id, REASON)
    return task_ids


def test_refused_decisions_are_listed_and_resent_one_by_one_or_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = build_console(tmp_path)
    first, second, third = _refused(parts, 3)
    use_cli_on(parts, monkeypatch)

    assert cli_main(["console", "refused"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["task_id"] for line in listed] == [first, second, third]
    assert {line["refused_reason"] for line in listed} == {REASON}
    assert {line["decision"] for line in listed} == {"approve_expected"}

    assert cli_main(["console", "resend", first]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"resent": 1, "not_resent": 0}
    assert [event.task_id for event in parts.tasks.unpublished()] == [first]
    assert parts.tasks.refused_count() == 2
    assert parts.tasks.audit(first)[-1].action == "resend"
    assert REASON in parts.tasks.audit(first)[-1].detail

    assert cli_main(["console", "resend", "--all"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"resent": 2, "not_resent": 0}
    assert parts.tasks.refused_count() == 0
    assert [event.task_id for event in parts.tasks.unpublished()] == [first, second, third]


def test_resend_names_each_task_it_cannot_resend_and_resends_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = build_console(tmp_path)
    [refused] = _refused(parts, 1)
    [waiting] = decided(parts, 1, first=1)  # in the outbox, not refused
    undecided = pending_envelope(flagged_item(parts.store, 2)).event_id
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 2)))
    use_cli_on(parts, monkeypatch)

    assert cli_main(["console", "resend", "f" * 32, waiting, undecided, refused]) == 1
    out, err = capsys.readouterr()
    assert f"{'f' * 32}: no such task" in err
    assert f"the decision of task {waiting} was not refused: it waits to be sent" in err
    assert f"task {undecided} has no decision to send (pending)" in err
    assert json.loads(out.splitlines()[-1]) == {"resent": 1, "not_resent": 3}
    assert parts.tasks.refused_count() == 0

    with pytest.raises(SystemExit) as exit_status:  # neither named nor --all: argparse's usage error
        cli_main(["console", "resend"])
    assert exit_status.value.code == 2


def test_the_item_page_says_a_decision_was_refused_and_why_escaped(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    envelope = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(envelope)
    decide_as_alice(parts, envelope.event_id, "reject", "<i>no</i>")
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    assert 'id="refused"' not in client.get(f"/tasks/{envelope.event_id}").text

    outbox = parts.tasks.outbox(envelope.event_id)
    assert outbox is not None
    parts.tasks.mark_refused(outbox.event_id, REASON)
    page = client.get(f"/tasks/{envelope.event_id}").text
    assert 'id="refused"' in page
    assert "not sent" in page
    assert "MessageSizeTooLargeError: &lt;b&gt;over&lt;/b&gt; max.message.bytes &amp; more" in page
    assert "<b>over</b>" not in page
    assert "&lt;i&gt;no&lt;/i&gt;" in page and "<i>no</i>" not in page


def test_the_queue_page_and_the_task_list_mark_a_refused_decision_escaped(tmp_path: Path) -> None:
    # Before, only the item page and GET /api/tasks/{id} said so: the queue of decided items (and a
    # script reading GET /api/tasks) showed a refused decision as any other, sent as far as it could tell.
    parts = build_console(tmp_path)
    refused, sent = _refused(parts, 1) + decided(parts, 1, first=1)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)

    tasks = {task["task_id"]: task for task in client.get("/api/tasks?state=all").json()["tasks"]}
    assert tasks[refused]["refused"] == REASON
    assert tasks[sent]["refused"] is None
    assert client.get(f"/api/tasks/{refused}").json()["refused"] == REASON

    page = client.get("/?state=all").text
    row = page[page.index(f'data-task-id="{refused}"') :].split("</tr>")[0]
    assert "not sent" in row
    assert "MessageSizeTooLargeError: &lt;b&gt;over&lt;/b&gt; max.message.bytes &amp; more" in row
    assert "<b>over</b>" not in page
    other = page[page.index(f'data-task-id="{sent}"') :].split("</tr>")[0]
    assert "not sent" not in other
