"""Found in review 45: the console's outbox and task list, as an operator and a reviewer meet them."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

import services.console.pages as pages_module
from services.console.tasks import UnreadableDecision, decision_event_id
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    app_for,
    build_console,
    decided,
    flagged_item,
    login,
    pending_envelope,
    spoil,
    traced_statements,
    use_cli_on,
    with_flagged,
)

REFUSED = "MessageSizeTooLargeError"


def test_an_unreadable_decision_is_discarded_by_its_task_id_and_no_readable_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, a decision the relay set aside as unreadable could only be deleted by hand in SQLite: it
    # stayed in skuforge_console_refused_decisions, so SkuforgeDecisionsRefused fired for ever.
    parts = build_console(tmp_path)
    spoiled, refused, waiting, published = decided(parts, 4)
    spoil(parts, "outbox", spoiled)
    for event in parts.tasks.unsent():  # as the relay sets an unreadable one aside
        if isinstance(event, UnreadableDecision):
            parts.tasks.mark_refused(event.event_id, event.error)
    parts.tasks.mark_refused(decision_event_id(refused), REFUSED)
    parts.tasks.mark_published(decision_event_id(published))
    undecided = pending_envelope(flagged_item(parts.store, 4))
    parts.tasks.add_pending(undecided)
    use_cli_on(parts, monkeypatch)
    gauge = "skuforge_console_refused_decisions {:.1f}"
    assert gauge.format(2) in generate_latest(parts.console.metrics.registry).decode()
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    login(client)
    assert client.get(f"/api/tasks/{spoiled}").status_code == 502

    named = ["f" * 32, refused, waiting, published, undecided.event_id, spoiled]
    assert cli_main(["console", "discard", *named]) == 1
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["task_id"] == spoiled
    assert f"the decision of task {spoiled} no longer reads" in lines[0]["was_unreadable"]
    assert lines[-1] == {"discarded": 1, "not_discarded": 5}
    assert f"skuforge console discard: {'f' * 32}: no such task" in err
    assert f"the decision of task {refused} reads, so it is not discarded (the broker refused it" in err
    assert f"the decision of task {waiting} reads, so it is not discarded (it waits to be sent)" in err
    assert f"the decision of task {published} was published: nothing to discard" in err
    assert f"task {undecided.event_id} has no decision to discard (pending)" in err

    assert gauge.format(1) in generate_latest(parts.console.metrics.registry).decode()
    assert [event.task_id for event in parts.tasks.refused()] == [refused]
    assert [event.task_id for event in parts.tasks.unpublished()] == [waiting]
    entry = parts.tasks.audit(spoiled)[-1]
    assert (entry.action, entry.previous_state, entry.new_state) == ("discard", "approved", "approved")
    assert f"the decision of task {spoiled} no longer reads" in entry.detail
    assert parts.tasks.get(spoiled).state == "approved", "the task stays as decided"
    assert client.get(f"/api/tasks/{spoiled}").status_code == 200, "its page reads again"

    assert cli_main(["console", "discard", spoiled]) == 1
    assert f"the decision of task {spoiled} was discarded already (audit entry" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_status:  # no task named: argparse's usage error
        cli_main(["console", "discard"])
    assert exit_status.value.code == 2


@pytest.mark.parametrize("query", ["state=all", "state=all&reason=iou_below_threshold"])
def test_a_queue_page_that_is_not_full_does_not_count_the_task_table_again(
    query: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, each load of the queue page counted its matches after listing them: with the "all" filter
    # a read of every task ever queued (with a reason or IoU filter, of every row of the table itself),
    # though a page shorter than its limit already shows every match and says nothing of a count.
    parts = with_flagged(build_console(tmp_path), 3)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    plan_of = closing(sqlite3.connect(parts.tasks.path))  # opened before the tracing: not traced
    statements = traced_statements(monkeypatch)

    page = client.get(f"/?{query}")

    assert page.status_code == 200
    assert len(re.findall(r'data-task-id="([0-9a-f]{32})"', page.text)) == 3
    assert 'id="cut"' not in page.text
    # The list's reads and its count's (the state tabs and the reason menu read the table on their own).
    list_reads = ("SELECT * FROM tasks", "SELECT COUNT(*) FROM tasks")
    reads = [sql for sql in statements if sql.startswith(list_reads)]
    assert reads, statements
    assert not [sql for sql in reads if sql.startswith("SELECT COUNT(*)")], reads
    with plan_of as db:
        for sql in reads:
            plan = [detail for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert "SCAN tasks" not in plan, (sql, plan)  # a read of every row of the table itself


def test_a_full_queue_page_still_says_how_many_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = with_flagged(build_console(tmp_path), 3)
    monkeypatch.setattr(pages_module, "QUEUE_PAGE_LIMIT", 3)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    assert 'id="cut"' not in client.get("/?state=all").text, "all 3 shown"
    monkeypatch.setattr(pages_module, "QUEUE_PAGE_LIMIT", 2)
    assert "showing 2 of 3 newest first" in client.get("/?state=all").text
    assert "showing 2 of 3 waiting, oldest first" in client.get("/").text
