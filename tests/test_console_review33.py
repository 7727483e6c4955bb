"""The console after review 33: the queue page shows only the refusals the server made for the
session it shows them to."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from starlette.testclient import TestClient

from tests.support.console import ConsoleParts, app_for, flagged_parts_fixture, login

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
