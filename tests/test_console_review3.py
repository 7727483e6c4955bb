"""The console after a review of its pages and tables: the queue's filters follow a reviewer from item
to item, a release of one's own expired lease gives the task back, a token that is not text is a 403,
a withdrawn task is no lost annotation, and the withdrawal sweep takes any number of SKUs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.console.labelstudio import WITHDRAWN, import_annotations
from tests.support.console import ConsoleParts, app_for, build_console, flagged_item, login, pending_envelope


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    """Three pending items, oldest first: SKU-A, SKU-B, SKU-A."""
    parts = build_console(tmp_path, lease_s=60.0)
    for index, sku_id in enumerate(("SKU-A", "SKU-B", "SKU-A")):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index, sku_id=sku_id)))
        parts.clock.advance(1.0)
    return parts


def _ids(parts: ConsoleParts, sku_id: str) -> list[str]:
    return [
        task.task_id for task in parts.tasks.query() if task.pending.matted.generated.sku.sku_id == sku_id
    ]


def test_claim_next_from_a_filtered_queue_keeps_the_filters(parts: ConsoleParts) -> None:
    """The redirect went to a bare /tasks/{id}; the item page's "next" then claimed the oldest item of
    any SKU. And with nothing left, /?empty=1 dropped the filters and said nothing."""
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    first_b = _ids(parts, "SKU-B")[0]
    response = client.post("/claim-next?sku=SKU-B", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/tasks/{first_b}?sku=SKU-B"
    # The item page's links and forms: from the queue with filters, to the item with them.
    queue = client.get("/?sku=SKU-A").text
    assert f'href="/tasks/{_ids(parts, "SKU-A")[0]}?sku=SKU-A"' in queue
    # Nothing pending for SKU-B now (alice holds it): the queue says so and keeps the filter.
    other = TestClient(app_for(parts), base_url="http://console.test")
    other_token = login(other, "bob")
    empty = other.post("/claim-next?sku=SKU-B", data={"csrf_token": other_token}, follow_redirects=False)
    assert empty.headers["location"] == "/?sku=SKU-B&empty=1"
    page = other.get(empty.headers["location"]).text
    assert "nothing left to claim with these filters" in page
    assert 'action="/claim-next?sku=SKU-B"' in page  # the note is not carried on


def test_releasing_ones_own_expired_lease_gives_the_task_back(parts: ConsoleParts) -> None:
    """Answered 409 "expired: claim it again": a reviewer had to claim the item to give it back."""
    task_id = _ids(parts, "SKU-B")[0]
    parts.tasks.claim(task_id, "alice", 60.0)
    parts.clock.advance(61.0)
    assert parts.tasks.release(task_id, "alice").state == "pending"
    # Also once a sweep (any page view reads the table) has given it back to the queue already.
    parts.tasks.claim(task_id, "alice", 60.0)
    parts.clock.advance(61.0)
    assert parts.tasks.get(task_id).state == "pending"
    assert parts.tasks.release(task_id, "alice").state == "pending"
    parts.tasks.claim(task_id, "bob", 60.0)  # someone else's expired lease stays theirs to release
    parts.clock.advance(61.0)
    with pytest.raises(Exception, match="not claimed by alice"):
        parts.tasks.release(task_id, "alice")


def test_a_csrf_token_that_is_not_text_is_a_403(parts: ConsoleParts) -> None:
    """utf-7 decodes '+2AA-' to a lone surrogate; encoding it for the comparison raised: a 500."""
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    response = client.post(
        "/claim-next",
        content=b"csrf_token=%2B2AA-",
        headers={"content-type": "application/x-www-form-urlencoded; charset=utf-7"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    from services.console.security import tokens_match

    assert not tokens_match("token", "tok\ud800")


def test_a_withdrawn_task_is_no_lost_annotation(parts: ConsoleParts) -> None:
    """Its claim was refused and the import counted an annotation lost: exit 1 on every import."""
    task_id = _ids(parts, "SKU-B")[0]
    photo = parts.tasks.get(task_id).pending.matted.generated.reference_photo_id
    assert parts.tasks.withdraw_photos({"SKU-B": {photo}}) == [task_id]
    choice = {"type": "choices", "from_name": "decision", "value": {"choices": ["reject"]}}
    entry = {"data": {"skuforge_task_id": task_id}, "annotations": [{"completed_by": 7, "result": [choice]}]}
    [outcome] = import_annotations(parts.tasks, parts.store, [entry])
    assert (outcome.outcome, outcome.detail, outcome.annotation_lost) == ("skipped", WITHDRAWN, False)


def test_the_withdrawal_sweep_takes_more_skus_than_sqlite_binds(parts: ConsoleParts) -> None:
    """One bound variable per SKU ever withdrawn from: past SQLite's limit every sweep failed."""
    task_id = _ids(parts, "SKU-B")[0]
    photo = parts.tasks.get(task_id).pending.matted.generated.reference_photo_id
    limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 32766 upstream
    withdrawn = {f"SKU-{index:07d}": {"p"} for index in range(limit + 1)} | {"SKU-B": {photo}}
    assert parts.tasks.withdraw_photos(withdrawn) == [task_id]
