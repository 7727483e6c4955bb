"""Found in review 45: the console's outbox and task list, as an operator and a reviewer meet them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

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
    use_cli_on,
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
    assert f"task {spoiled} has no decision to discard (approved)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_status:  # no task named: argparse's usage error
        cli_main(["console", "discard"])
    assert exit_status.value.code == 2
