"""Rows stored under a schema this version refuses: however many there are, they must not hide the
readable tasks and decisions behind them, and reading one must answer with the reason, not a 500."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

import services.console.relay as relay_module
from schemas.topics import Topic
from services.console.relay import DecisionRelay
from services.console.tasks import decision_event_id
from shared.config import load_settings
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    decided,
    flagged_item,
    login,
    pending_envelope,
    spoil,
    use_cli_on,
    with_flagged,
)

PAGE_SIZE = 3


class RecordingBroker:
    """Stands in for the relay's Publisher: keeps the event ids it was sent, as the broker would."""

    sent: list[str] = []

    def __init__(self, settings: object, producer_name: str) -> None:
        pass

    def publish(
        self,
        topic: Topic[Any],
        payload: object,
        *,
        sku_id: str,
        event_id: str,
        trace_id: str,
        produced_at: datetime,
    ) -> None:
        RecordingBroker.sent.append(event_id)

    def close(self) -> None:
        pass


def test_a_page_of_unreadable_decisions_does_not_stop_the_relay_publishing_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the relay read one page (LIMIT first, then dropped what did not read): with a page of
    # unreadable decisions at the head of the outbox it published nothing, round after round.
    parts = build_console(tmp_path)
    task_ids = decided(parts, PAGE_SIZE + 2)
    for task_id in task_ids[: PAGE_SIZE + 1]:
        spoil(parts, "outbox", task_id)
    monkeypatch.setattr(relay_module, "Publisher", RecordingBroker)
    monkeypatch.setattr(RecordingBroker, "sent", [])
    relay = DecisionRelay(parts.tasks, load_settings(), page_size=PAGE_SIZE)
    assert relay.publish_pending() == 1
    assert RecordingBroker.sent == [decision_event_id(task_ids[-1])]
    # The unreadable ones are set aside, listed and counted as such (test_console_review44).
    assert (parts.tasks.unpublished_count(), parts.tasks.refused_count()) == (0, PAGE_SIZE + 1)


@pytest.fixture
def queue_behind_unreadable(tmp_path: Path) -> tuple[ConsoleParts, list[str]]:
    """22 pending tasks, the 20 oldest unreadable (as many as claim-next reads at once)."""
    parts = with_flagged(build_console(tmp_path), 22)
    task_ids = [task.task_id for task in parts.tasks.query()]
    for task_id in task_ids[:20]:
        spoil(parts, "tasks", task_id)
    return parts, task_ids


def test_a_page_of_unreadable_tasks_does_not_empty_the_queue(
    queue_behind_unreadable: tuple[ConsoleParts, list[str]],
) -> None:
    # Before, the queue read one page and dropped what did not read: an empty list.
    parts, task_ids = queue_behind_unreadable
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    listed = client.get("/api/tasks?limit=2").json()["tasks"]
    assert [task["task_id"] for task in listed] == task_ids[20:]
    page = client.get("/")
    assert page.status_code == 200 and page.text.count("data-task-id=") == 2


def test_a_page_of_unreadable_tasks_does_not_stop_claim_next(
    queue_behind_unreadable: tuple[ConsoleParts, list[str]],
) -> None:
    # Before, claim-next read 20 pending tasks: all unreadable, it answered "nothing to review".
    parts, task_ids = queue_behind_unreadable
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    claimed = client.post("/api/claim-next", headers={"X-CSRF-Token": token})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["task"] is not None and claimed.json()["task"]["task_id"] == task_ids[20]


@pytest.mark.parametrize("url", ["/api/tasks/{id}", "/tasks/{id}", "/tasks/{id}/images/corrected"])
def test_a_task_whose_decision_no_longer_reads_answers_502_with_the_reason(tmp_path: Path, url: str) -> None:
    # Before, the decision's ValidationError escaped: a bare 500 with no reason.
    parts = build_console(tmp_path)
    (task_id,) = decided(parts, 1)
    spoil(parts, "outbox", task_id)
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    login(client)
    response = client.get(url.format(id=task_id))
    assert response.status_code == 502, response.text
    assert "decision_unreadable" in response.json()["detail"]
    assert f"the decision of task {task_id} no longer reads" in response.json()["detail"]


def test_a_task_that_no_longer_reads_is_not_claimed_and_answers_502(tmp_path: Path) -> None:
    """Claiming one by id committed the claim and then answered 502, so it stayed held until its lease
    ran out; renewing or deciding one that was spoiled while held was a bare 500."""
    parts = build_console(tmp_path, lease_s=600.0)
    for index in range(2):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index, sku_id=f"SKU-{index}")))
    spoiled, held = (task.task_id for task in parts.tasks.query())
    spoil(parts, "tasks", spoiled)
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    headers = {"X-CSRF-Token": login(client)}

    response = client.post(f"/api/tasks/{spoiled}/claim", headers=headers)
    assert response.status_code == 502 and "task_unreadable" in response.json()["detail"]
    assert parts.tasks.counts()["claimed"] == 0, "not claimed"

    assert client.post(f"/api/tasks/{held}/claim", headers=headers).status_code == 200
    spoil(parts, "tasks", held)
    for response in (
        client.post(f"/api/tasks/{held}/renew", headers=headers),
        client.post(f"/api/tasks/{held}/decision", data={"decision": "approve_predicted"}, headers=headers),
    ):
        assert response.status_code == 502, response.text
        assert f"task {held} no longer reads" in response.json()["detail"]


def test_ones_own_claim_that_no_longer_reads_does_not_stop_claim_next(tmp_path: Path) -> None:
    """claim-next hands a reviewer their own claim first: when it was spoiled while held, claim-next
    answered 502 "no longer reads", again and again until its lease ran out, and the reviewer was
    handed nothing. It is passed over as the queue passes over one that does not read."""
    parts = build_console(tmp_path, lease_s=600.0)
    for index in range(2):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index, sku_id=f"SKU-{index}")))
        parts.clock.advance(1.0)
    held, following = (task.task_id for task in parts.tasks.query())
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    headers = {"X-CSRF-Token": login(client)}
    assert client.post(f"/api/tasks/{held}/claim", headers=headers).status_code == 200
    spoil(parts, "tasks", held)
    for _ in range(2):  # the next claim-next renews the readable one: still not the spoiled one
        claimed = client.post("/api/claim-next", headers=headers)
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["task"]["task_id"] == following


def test_releasing_a_held_task_that_no_longer_reads_answers_502_and_changes_nothing(tmp_path: Path) -> None:
    """Releasing one spoiled while held committed the release and then answered 502: the reviewer was
    told it failed, and trying again answered 409 "not claimed by alice: claim it first". As a claim,
    renewal or decision of it, the release is now refused with the reason and nothing changes."""
    parts = with_flagged(build_console(tmp_path, lease_s=600.0), 1)
    (held,) = (task.task_id for task in parts.tasks.query())
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    headers = {"X-CSRF-Token": login(client)}
    assert client.post(f"/api/tasks/{held}/claim", headers=headers).status_code == 200
    spoil(parts, "tasks", held)
    for _ in range(2):
        response = client.post(f"/api/tasks/{held}/release", headers=headers)
        assert response.status_code == 502, response.text
        assert f"task {held} no longer reads" in response.json()["detail"]
    assert parts.tasks.counts()["claimed"] == 1, "still held, as the answer says"


def test_a_refused_decision_that_no_longer_reads_is_listed_as_metrics_count_it_and_not_resent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, /metrics counted 2 refused decisions while ``skuforge console refused`` listed 1 and
    # ``resend --all`` said {"resent": 1, "not_resent": 0}: the other was only in a log line.
    parts = build_console(tmp_path)
    readable, spoiled = decided(parts, 2)
    for task_id in (readable, spoiled):
        parts.tasks.mark_refused(decision_event_id(task_id), "MessageSizeTooLargeError")
    spoil(parts, "outbox", spoiled)
    use_cli_on(parts, monkeypatch)
    assert (
        "skuforge_console_refused_decisions 2.0" in generate_latest(parts.console.metrics.registry).decode()
    )

    assert cli_main(["console", "refused"]) == 0
    listed = {line["task_id"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert listed.keys() == {readable, spoiled}
    assert listed[spoiled]["refused_reason"] == "MessageSizeTooLargeError"
    assert f"the decision of task {spoiled} no longer reads" in listed[spoiled]["unreadable"]
    assert "unreadable" not in listed[readable]

    # Given back, it would not be sent either: the relay would set it aside again.
    assert cli_main(["console", "resend", "--all"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1]) == {"resent": 1, "not_resent": 1}
    assert f"the decision of task {spoiled} no longer reads" in err
    assert parts.tasks.refused_count() == 1
