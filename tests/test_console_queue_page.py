"""The queue page of decided items: the newest first, and a note when the list is cut."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import services.console.pages as pages_module
from tests.support.console import app_for, build_console, decided, login


def test_decided_items_are_listed_newest_first_and_a_cut_list_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the page showed the 200 oldest decisions, the newest nowhere, with no word of the cut.
    parts = build_console(tmp_path)
    oldest_first = []
    for index in range(3):
        oldest_first += decided(parts, 1, first=index)
        parts.clock.advance(60.0)
    monkeypatch.setattr(pages_module, "QUEUE_PAGE_LIMIT", 2)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    for state in ("approved", "all"):
        page = client.get(f"/?state={state}")
        assert page.status_code == 200
        assert re.findall(r'data-task-id="([0-9a-f]{32})"', page.text) == oldest_first[:0:-1], state
        assert "showing 2 of 3 newest first" in page.text, state
    monkeypatch.setattr(pages_module, "QUEUE_PAGE_LIMIT", 200)
    assert "showing" not in client.get("/?state=approved").text


def test_a_decided_list_goes_by_decision_time_not_arrival(tmp_path: Path) -> None:
    """An item that waited long and was decided just now was listed below every later arrival."""
    from services.console.tasks import TaskFilter
    from tests.support.console import decide_as_alice, flagged_item, pending_envelope

    parts = build_console(tmp_path)
    arrived = []
    for index in range(2):
        envelope = pending_envelope(flagged_item(parts.store, index))
        parts.tasks.add_pending(envelope)
        arrived.append(envelope.event_id)
        parts.clock.advance(60.0)
    for task_id in reversed(arrived):  # the newer arrival decided first, the older one last
        decide_as_alice(parts, task_id)
        parts.clock.advance(60.0)
    listed = [task.task_id for task in parts.tasks.query(TaskFilter(state="approved"))]
    assert listed == arrived  # the older arrival, decided last, first
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    page = client.get("/?state=approved")
    assert re.findall(r'data-task-id="([0-9a-f]{32})"', page.text) == arrived
