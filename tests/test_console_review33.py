"""The console after review 33: the queue page shows only the refusals the server made for the
session it shows them to; a claim is judged at the time it holds the task table, so one made as a
lease runs out takes the task."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.testclient import TestClient

from tests.support.console import ConsoleParts, app_for, flagged_parts_fixture, login, table_is_busy

parts = flagged_parts_fixture(1)

PHISH = "Your session expired: log in again at https://console.example.evil/login"


def test_a_crafted_link_shows_no_text_of_its_own_on_the_queue_page(parts: ConsoleParts) -> None:
    """The refusal note is in the queue page's address: a link anyone can send showed its text (up to
    300 characters) in the console's status line, as though the console said it."""
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)

    for query in ({"refused": PHISH}, {"refused": PHISH, "refused_tag": "0" * 32}):
        page = client.get("/", params=query)
        assert page.status_code == 200
        assert "console.example.evil" not in page.text and 'id="refused"' not in page.text, query


def test_a_refusal_is_shown_to_the_session_it_was_made_for_only(parts: ConsoleParts) -> None:
    """The queue's claim refused (bob holds the item) lands back on the queue with the server's reason;
    the same address opened in another session, or with its text changed, shows nothing."""
    (task,) = parts.tasks.query()
    parts.tasks.claim(task.task_id, "bob", 60.0)
    alice = TestClient(app_for(parts), base_url="http://console.test")
    token = login(alice)

    refused = alice.post(
        f"/tasks/{task.task_id}/claim?sku={task.sku_id}", data={"csrf_token": token}, follow_redirects=False
    )

    assert refused.status_code == 303, refused.text
    location = refused.headers["location"]
    reason = f"could not claim: task {task.task_id} is claimed by bob"
    assert reason in alice.get(location).text
    note = parse_qs(urlsplit(location).query)
    assert note["sku"] == [task.sku_id]
    changed = alice.get("/", params={**note, "refused": "could not claim: " + PHISH})
    assert "console.example.evil" not in changed.text and 'id="refused"' not in changed.text
    bob = TestClient(app_for(parts), base_url="http://console.test")
    login(bob, "bob")
    assert reason not in bob.get(location).text


class LeaseRunsOutWhileTheTableIsBusy:
    """A clock that reads half a second before ``lease_end`` while nobody writes to the task table at
    ``path``, and half a second after it while a write transaction holds the table: the lease runs out
    while a claim waits for the table (another claim, the intake, the relay writing)."""

    def __init__(self, path: Path, lease_end: float) -> None:
        self.path = path
        self.lease_end = lease_end

    def __call__(self) -> float:
        return self.lease_end + (0.5 if table_is_busy(self.path) else -0.5)


def held_by_bob_until_the_table_is_busy(parts: ConsoleParts) -> str:
    """The task bob holds, with a clock under which his lease runs out once a writer holds the table."""
    (task,) = parts.tasks.query()
    held = parts.tasks.claim(task.task_id, "bob", 60.0)
    assert held.lease_expires_at is not None
    parts.tasks.clock = LeaseRunsOutWhileTheTableIsBusy(parts.tasks.path, held.lease_expires_at)
    return task.task_id


def test_a_claim_made_as_the_lease_runs_out_takes_the_task(parts: ConsoleParts) -> None:
    """The claim returned expired leases at one reading of the clock and judged the task at another,
    both before it held the table: bob's lease, over by the time the claim held the table, still
    refused it (409 "claimed by bob"), and the same claim a moment later took it."""
    task_id = held_by_bob_until_the_table_is_busy(parts)

    claimed = parts.tasks.claim(task_id, "alice", 60.0)

    assert (claimed.state, claimed.claimed_by) == ("claimed", "alice")
    actions = [(entry.action, entry.reviewer) for entry in parts.tasks.audit(task_id)][-2:]
    assert actions == [("lease_expired", "bob"), ("claim", "alice")]


def test_claim_next_made_as_the_lease_runs_out_takes_the_task(parts: ConsoleParts) -> None:
    """As a claim: "nothing left to claim", while the only task's lease was over."""
    task_id = held_by_bob_until_the_table_is_busy(parts)

    claimed = parts.tasks.claim_next("alice", 60.0)

    assert claimed is not None and (claimed.task_id, claimed.claimed_by) == (task_id, "alice")


def test_the_check_table_tells_a_flagged_figure_from_its_threshold(tmp_path: Path) -> None:
    """The item page's check table showed value and threshold at 3 decimals: a flagged IoU of 0.8996
    read "0.900 / 0.900 ✗", as if it met its threshold (the gate's own message had the same fault)."""
    from services.console.tasks import TaskFilter
    from shared.gate.checks import GateCheck
    from tests.support.console import build_console, flagged_item, pending_envelope

    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    just_under = GateCheck(code="iou_below_threshold", passed=False, value=0.8996, threshold=0.9)
    far_under = GateCheck(code="product_drift", passed=False, value=31.25, threshold=20.0)
    parts.tasks.add_pending(pending_envelope(pending.model_copy(update={"checks": [just_under, far_under]})))
    (task,) = parts.tasks.query(TaskFilter())
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    page = client.get(f"/tasks/{task.task_id}")
    assert page.status_code == 200
    assert "<td>0.8996</td><td>0.9000</td>" in page.text, page.text
    assert "<td>31.250</td><td>20.000</td>" in page.text  # figures apart keep their 3 decimals
