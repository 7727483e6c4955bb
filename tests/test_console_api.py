"""The console's API and task table: login on every route, CSRF, claims and leases, decisions, audit."""

from __future__ import annotations

import io
import re
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.routing import iter_route_contexts
from PIL import Image
from prometheus_client import generate_latest
from starlette.testclient import TestClient

from services.console.decisions import mask_from_ref
from services.console.intake import handle as intake_handle
from services.console.tasks import _SCHEMA, TaskFilter, TaskStore, decision_event_id
from shared import keys
from shared.images import decode_mask, encode_png
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    claim,
    decide,
    decide_as_alice,
    flagged_item,
    login,
    pending_envelope,
)


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    parts = build_console(tmp_path, lease_s=60.0)
    for index in range(3):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index, sku_id=f"SKU-{index % 2}")))
        parts.clock.advance(1.0)  # distinct arrival times: oldest first is observable
    return parts


@pytest.fixture
def client(parts: ConsoleParts) -> TestClient:
    return TestClient(app_for(parts), base_url="http://console.test")


def first_task_id(parts: ConsoleParts) -> str:
    return parts.tasks.query()[0].task_id


def fill(path: str, task_id: str) -> str:
    return path.replace("{task_id}", task_id).replace("{kind}", "generated").replace("{name}", "item.js")


def mask_png(mask: np.ndarray) -> bytes:
    return encode_png(mask.astype(np.uint8))


# -- login ------------------------------------------------------------------------------------


def test_every_route_but_the_login_form_needs_a_session(parts: ConsoleParts, client: TestClient) -> None:
    task_id = first_task_id(parts)
    # The routes of every router the app includes (auth, pages, API), with their full paths.
    routes = list(iter_route_contexts(client.app.routes))  # type: ignore[attr-defined]
    checked = 0
    for route in routes:
        assert route.path is not None, route
        for method in sorted(route.methods or ()):
            if method == "HEAD" or route.path == "/login":
                continue
            url = fill(route.path, task_id)
            for cookie in (None, "forged.0123", "e30=." + "0" * 64):
                client.cookies.clear()
                if cookie:
                    client.cookies.set("skuforge_console", cookie)
                response = client.request(method, url, follow_redirects=False)
                assert response.status_code in (303, 401), (method, url, response.status_code)
                if response.status_code == 303:
                    assert response.headers["location"].startswith("/login"), (method, url)
                assert not response.content.startswith(b"\x89PNG"), (method, url)
                assert b"item-0000" not in response.content, (method, url)
            checked += 1
    # Queue, item, images, static, every API route (15 today): a new route is covered automatically.
    assert checked >= 15


def test_wrong_password_gets_no_session(client: TestClient) -> None:
    page = client.get("/login")
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce
    response = client.post(
        "/login",
        data={"reviewer": "alice", "password": "guess", "login_nonce": nonce.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"].startswith("/login?error=")
    assert "skuforge_console" not in response.cookies
    assert client.get("/api/tasks").status_code == 401


def test_login_form_needs_its_nonce(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data={"reviewer": "alice", "password": "alice-password"})
    assert response.status_code == 403


def test_login_redirect_stays_on_the_console(client: TestClient) -> None:
    response = client.get("/login?next=//evil.example/x")
    assert 'name="next" value="/"' in response.text


# -- CSRF -------------------------------------------------------------------------------------


def test_every_state_changing_request_needs_the_csrf_token(parts: ConsoleParts, client: TestClient) -> None:
    token = login(client)
    task_id = first_task_id(parts)
    posts = [
        route.path
        for route in iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
        if "POST" in (route.methods or ()) and route.path != "/login"
    ]
    assert len(posts) >= 9
    for path in posts:
        assert path is not None
        url = fill(path, task_id)
        missing = client.post(url, follow_redirects=False)
        wrong = client.post(url, headers={"X-CSRF-Token": "not-the-token"}, follow_redirects=False)
        wrong_form = client.post(url, data={"csrf_token": "not-the-token"}, follow_redirects=False)
        cross_site = client.post(
            url, headers={"X-CSRF-Token": token, "Origin": "http://evil.example"}, follow_redirects=False
        )
        for response in (missing, wrong, wrong_form, cross_site):
            assert response.status_code == 403, (url, response.status_code, response.text)
    # Nothing changed: no claim, no decision.
    assert parts.tasks.counts() == {
        "pending": 3,
        "claimed": 0,
        "approved": 0,
        "rejected": 0,
        "withdrawn": 0,
        "accepted": 0,
    }
    assert all(entry.action == "intake" for entry in parts.tasks.audit())
    # And the same request with the token works (the form field or the header).
    ok = client.post(f"/tasks/{task_id}/claim", data={"csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == f"/tasks/{task_id}"


# -- claims and leases --------------------------------------------------------------------------


def test_claim_gives_a_lease_and_an_expired_lease_returns_the_item(
    parts: ConsoleParts, client: TestClient
) -> None:
    alice_token = login(client, "alice")
    bob = TestClient(client.app, base_url="http://console.test")
    bob_token = login(bob, "bob")
    task_id = first_task_id(parts)

    claimed = client.post(f"/api/tasks/{task_id}/claim", headers={"X-CSRF-Token": alice_token})
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] == "alice"
    refused = bob.post(f"/api/tasks/{task_id}/claim", headers={"X-CSRF-Token": bob_token})
    assert refused.status_code == 409 and "alice" in refused.json()["detail"]
    # Bob cannot decide on Alice's item either.
    stolen = bob.post(
        f"/api/tasks/{task_id}/decision",
        data={"decision": "approve_predicted"},
        headers={"X-CSRF-Token": bob_token},
    )
    assert stolen.status_code == 409

    parts.clock.advance(59.0)
    assert (
        client.post(f"/api/tasks/{task_id}/renew", headers={"X-CSRF-Token": alice_token}).status_code == 200
    )
    parts.clock.advance(59.0)  # renewed: still Alice's
    assert bob.post(f"/api/tasks/{task_id}/claim", headers={"X-CSRF-Token": bob_token}).status_code == 409

    parts.clock.advance(2.0)  # the renewed lease ran out
    queue = client.get("/api/tasks").json()
    assert task_id in [task["task_id"] for task in queue["tasks"]] and queue["counts"]["claimed"] == 0
    late = client.post(
        f"/api/tasks/{task_id}/decision",
        data={"decision": "approve_predicted"},
        headers={"X-CSRF-Token": alice_token},
    )
    assert late.status_code == 409
    taken = bob.post(f"/api/tasks/{task_id}/claim", headers={"X-CSRF-Token": bob_token})
    assert taken.status_code == 200 and taken.json()["claimed_by"] == "bob"
    actions = [(e.action, e.reviewer, e.previous_state) for e in parts.tasks.audit(task_id)]
    assert actions == [
        ("intake", None, None),
        ("claim", "alice", "pending"),
        ("lease_expired", "alice", "claimed"),
        ("claim", "bob", "pending"),
    ]


def test_claim_next_takes_the_oldest_matching_item(parts: ConsoleParts, client: TestClient) -> None:
    token = login(client)
    oldest = parts.tasks.query()[0]
    first = client.post("/api/claim-next", headers={"X-CSRF-Token": token}).json()["task"]
    assert first["task_id"] == oldest.task_id
    # A reviewer's own claim comes back first, so "next" never strands an item.
    again = client.post("/api/claim-next", headers={"X-CSRF-Token": token}).json()["task"]
    assert again["task_id"] == oldest.task_id
    client.post(f"/api/tasks/{oldest.task_id}/release", headers={"X-CSRF-Token": token})
    drift = client.post("/api/claim-next?reason=product_drift", headers={"X-CSRF-Token": token}).json()[
        "task"
    ]
    assert "product_drift" in drift["reasons"] and drift["item_id"] == "item-0001"


def test_claim_next_hands_back_ones_own_claim_only_when_it_matches_the_filters(
    parts: ConsoleParts, client: TestClient
) -> None:
    # Before, the own claim came first whatever the filters: claim-next?sku=SKU-1 answered a SKU-0 item.
    headers = {"X-CSRF-Token": login(client)}
    sku0, sku1 = (parts.tasks.query(TaskFilter(sku_id=sku))[0].task_id for sku in ("SKU-0", "SKU-1"))
    assert client.post("/api/claim-next?sku=SKU-0", headers=headers).json()["task"]["task_id"] == sku0
    other = client.post("/api/claim-next?sku=SKU-1", headers=headers).json()["task"]
    assert other["task_id"] == sku1 and other["sku_id"] == "SKU-1"
    assert parts.tasks.get(sku0).claimed_by == "alice", "the other claim stays theirs"
    assert client.post("/api/claim-next?sku=SKU-0", headers=headers).json()["task"]["task_id"] == sku0


def test_claim_next_honours_the_state_filter(parts: ConsoleParts, client: TestClient) -> None:
    """claim-next read the SKU, reason and IoU filters but not the state: a reviewer looking through
    the accepted (or approved...) items was handed, and given a lease on, the oldest pending item of
    the queue; one looking at the claimed items, a pending one too."""
    token = login(client)
    headers = {"X-CSRF-Token": token}
    oldest, middle, newest = (task.task_id for task in parts.tasks.query())
    parts.tasks.claim(newest, "bob", 60.0)
    for state in ("approved", "rejected", "withdrawn", "accepted", "claimed"):
        answer = client.post(f"/api/claim-next?state={state}", headers=headers)
        assert answer.status_code == 200 and answer.json() == {"task": None}, (state, answer.text)
    assert parts.tasks.get(oldest).state == "pending" and parts.tasks.get(middle).state == "pending"
    # The queue page's button: back to the filtered queue, which says why nothing was claimed.
    form = client.post("/claim-next?state=accepted", data={"csrf_token": token}, follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"] == "/?state=accepted&empty=1"
    note = client.get(form.headers["location"]).text
    assert "nothing left to claim with these filters: accepted items are closed" in note
    assert parts.tasks.counts()["claimed"] == 1  # bob's, nothing of alice's
    # Filtered by claimed, claim-next hands back one's own claim (renewed), never someone else's.
    client.post(f"/api/tasks/{middle}/claim", headers=headers)
    own = client.post("/api/claim-next?state=claimed", headers=headers).json()["task"]
    assert own["task_id"] == middle and own["claimed_by"] == "alice"
    # Every state: one's own claim first, then the oldest pending, as with the default (pending).
    assert client.post("/api/claim-next?state=all", headers=headers).json()["task"]["task_id"] == middle
    client.post(f"/api/tasks/{middle}/release", headers=headers)
    assert client.post("/api/claim-next?state=all", headers=headers).json()["task"]["task_id"] == oldest


def test_queue_filters_and_order(parts: ConsoleParts, client: TestClient) -> None:
    login(client)
    everything = client.get("/api/tasks").json()
    assert [t["item_id"] for t in everything["tasks"]] == ["item-0000", "item-0001", "item-0002"]
    assert everything["counts"]["pending"] == 3
    by_sku = client.get("/api/tasks?sku=SKU-1").json()["tasks"]
    assert [t["item_id"] for t in by_sku] == ["item-0001"]
    by_reason = client.get("/api/tasks?reason=product_drift").json()["tasks"]
    assert [t["item_id"] for t in by_reason] == ["item-0001"]
    ious = sorted(t["iou"] for t in everything["tasks"])
    band = client.get(f"/api/tasks?iou_min={ious[1]}&iou_max={ious[1]}").json()["tasks"]
    assert [t["iou"] for t in band] == [ious[1]]
    page = client.get("/?reason=product_drift")
    assert page.status_code == 200 and "item-0001" in page.text and "item-0000" not in page.text
    assert re.search(r'data-state="pending">3<', page.text)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("iou_min=0.9&iou_max=0.1", "iou_min is larger"),
        ("iou_min=2", "less than or equal to 1"),
        ("iou_min=0_1", "a number from 0 to 1"),  # float() read it as 1.0
        ("iou_max=1e-1", "a number from 0 to 1"),
        ("iou_min=%D9%A1", "a number from 0 to 1"),  # an Arabic-Indic one: float() read it as 1.0
        ("sku=../etc", "sku"),
        ("reason=DROP%20TABLE", "1 to 64 of a-z, 0-9 and _"),  # the whole pattern, not a bare [a-z0-9_]{1,64}
        ("state=lost", "pending"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(client: TestClient, query: str, fragment: str) -> None:
    login(client)
    response = client.get(f"/api/tasks?{query}")
    assert response.status_code == 422 and fragment in response.text


# -- decisions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "mask_of"),
    [
        ("approve_predicted", lambda m: m.predicted_mask),
        ("approve_expected", lambda m: m.generated.expected_mask),
    ],
)
def test_approve_with_a_model_mask(
    parts: ConsoleParts, client: TestClient, decision: str, mask_of: Any
) -> None:
    token = login(client, "alice")
    task = parts.tasks.query()[0]
    claim(client, token, task.task_id)
    parts.clock.advance(7.0)
    response = decide(client, token, task.task_id, decision=decision)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "approved" and body["event_id"] == decision_event_id(task.task_id)
    outbox = parts.tasks.outbox(task.task_id)
    assert outbox is not None and outbox.published_at is None  # no relay here: it waits in the outbox
    assert outbox.payload.decision == decision and outbox.payload.reviewer == "alice"
    assert outbox.payload.final_mask == mask_of(task.pending.matted)
    assert outbox.payload.pending == task.pending
    last = parts.tasks.audit(task.task_id)[-1]
    assert (last.action, last.reviewer, last.previous_state, last.new_state) == (
        decision,
        "alice",
        "claimed",
        "approved",
    )
    # Decided is final: no second decision, no new claim.
    assert decide(client, token, task.task_id, decision="reject", reject_reason="x").status_code == 409
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers={"X-CSRF-Token": token}).status_code == 409
    metrics = generate_latest(parts.console.metrics.registry).decode()
    assert f'skuforge_console_decisions_total{{action="{decision}"}} 1.0' in metrics
    assert 'skuforge_console_tasks{state="approved"} 1.0' in metrics
    assert 'skuforge_console_tasks{state="pending"} 2.0' in metrics
    assert "skuforge_console_decision_seconds_count 1.0" in metrics
    assert "skuforge_console_unpublished_decisions 1.0" in metrics


def test_edited_mask_is_stored_and_referenced(parts: ConsoleParts, client: TestClient) -> None:
    token = login(client, "bob")
    task = parts.tasks.query()[0]
    claim(client, token, task.task_id)
    predicted = mask_from_ref(parts.store, task.pending.matted.predicted_mask)
    edited = predicted.copy()
    edited[10:30, 90:120] = 255  # the stroke
    edited[0:5, 0:5] = 0
    response = decide(client, token, task.task_id, decision="approve_edited", mask=mask_png(edited))
    assert response.status_code == 200, response.text
    final = parts.tasks.outbox(task.task_id).payload.final_mask  # type: ignore[union-attr]
    assert final is not None
    assert final.uri.endswith(f"masks/corrected/{task.sku_id}/{task.item_id}-{final.sha256[:16]}.png")
    stored = decode_mask(parts.store.read_verified(final))
    assert np.array_equal(stored, edited) and not np.array_equal(stored, predicted)
    assert (final.width, final.height) == (predicted.shape[1], predicted.shape[0])
    # The corrected mask is served to logged-in reviewers.
    image = client.get(f"/tasks/{task.task_id}/images/corrected")
    assert image.status_code == 200 and image.content == parts.store.read_verified(final)


def test_grey_and_rgb_uploads_become_a_binary_mask(parts: ConsoleParts, client: TestClient) -> None:
    token = login(client)
    task = parts.tasks.query()[0]
    claim(client, token, task.task_id)
    rgba = np.zeros((128, 128, 4), dtype=np.uint8)
    rgba[40:80, 40:80] = (200, 200, 200, 255)  # what a canvas's toBlob gives
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    assert (
        decide(client, token, task.task_id, decision="approve_edited", mask=buffer.getvalue()).status_code
        == 200
    )
    final = parts.tasks.outbox(task.task_id).payload.final_mask  # type: ignore[union-attr]
    stored = decode_mask(parts.store.read_verified(final))  # type: ignore[arg-type]
    assert (
        set(np.unique(stored).tolist()) == {0, 255} and stored[40:80, 40:80].all() and stored[:40].sum() == 0
    )


def test_reject_needs_a_reason(parts: ConsoleParts, client: TestClient) -> None:
    token = login(client)
    task = parts.tasks.query()[0]
    claim(client, token, task.task_id)
    missing = decide(client, token, task.task_id, decision="reject")
    assert missing.status_code == 422 and "reason" in missing.json()["detail"]
    blank = decide(client, token, task.task_id, decision="reject", reject_reason="   ")
    assert blank.status_code == 422
    assert parts.tasks.get(task.task_id).state == "claimed"
    ok = decide(
        client, token, task.task_id, decision="reject", reject_reason="wrong_product: a can, not a box"
    )
    assert ok.status_code == 200 and ok.json()["state"] == "rejected"
    payload = parts.tasks.outbox(task.task_id).payload  # type: ignore[union-attr]
    assert payload.decision == "reject" and payload.final_mask is None
    assert payload.reject_reason == "wrong_product: a can, not a box"
    assert parts.tasks.audit(task.task_id)[-1].detail == "wrong_product: a can, not a box"


@pytest.mark.parametrize(
    ("form", "mask", "status", "fragment"),
    [
        ({"decision": "approve_edited"}, None, 422, "needs the edited mask"),
        ({"decision": "approve_edited"}, b"not a png", 422, "not_an_image"),
        ({"decision": "approve_edited"}, "small", 422, "the generated image is 128x128"),
        ({"decision": "approve_predicted"}, "full", 422, "takes no mask"),
        ({"decision": "approve_predicted", "reject_reason": "x"}, None, 422, "only a rejection"),
        ({"decision": "approve_everything"}, None, 422, "decision"),
        ({"decision": "reject", "reject_reason": "bad\x07bell"}, None, 422, "control characters"),
        ({"decision": "reject", "reject_reason": "x" * 300}, None, 422, "at most 200"),
    ],
)
def test_invalid_decisions_are_refused_with_a_reason(
    parts: ConsoleParts, client: TestClient, form: dict[str, str], mask: Any, status: int, fragment: str
) -> None:
    token = login(client)
    task = parts.tasks.query()[0]
    claim(client, token, task.task_id)
    if mask == "small":
        mask = mask_png(np.zeros((64, 64), dtype=np.uint8))
    elif mask == "full":
        mask = mask_png(np.full((128, 128), 255, dtype=np.uint8))
    response = decide(client, token, task.task_id, mask=mask, **form)
    assert response.status_code == status and fragment in response.text, response.text
    assert parts.tasks.get(task.task_id).state == "claimed"
    assert parts.tasks.outbox(task.task_id) is None
    assert not list(parts.store.list_keys(keys.Folder.CORRECTED_MASKS.of(task.sku_id)))


def test_unknown_and_malformed_task_ids(client: TestClient) -> None:
    token = login(client)
    assert client.get("/api/tasks/" + "0" * 32).status_code == 404
    assert client.get("/api/tasks/not-an-id").status_code == 422
    assert client.get("/tasks/" + "0" * 32 + "/images/generated").status_code == 404
    assert client.get("/tasks/" + "0" * 32 + "/images/secrets").status_code == 422
    assert (
        client.post("/api/tasks/" + "0" * 32 + "/claim", headers={"X-CSRF-Token": token}).status_code == 404
    )
    assert client.get("/static/../app.py").status_code == 404


def test_item_page_shows_the_item_and_serves_its_images(parts: ConsoleParts, client: TestClient) -> None:
    login(client)
    task = parts.tasks.query()[0]
    page = client.get(f"/tasks/{task.task_id}")
    assert page.status_code == 200
    for text in (task.item_id, task.sku_id, f"{task.iou:.3f}", "iou_below_threshold", 'id="overlay"'):
        assert text in page.text
    matted = task.pending.matted
    for kind, ref in [
        ("generated", matted.generated.image),
        ("predicted", matted.predicted_mask),
        ("expected", matted.generated.expected_mask),
        ("reference", matted.generated.reference_image),
    ]:
        response = client.get(f"/tasks/{task.task_id}/images/{kind}")
        assert response.status_code == 200 and response.content == parts.store.read_verified(ref), kind
    assert client.get(f"/tasks/{task.task_id}/images/corrected").status_code == 404
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_tampered_image_is_not_served(parts: ConsoleParts, client: TestClient) -> None:
    login(client)
    task = parts.tasks.query()[0]
    key = parts.store.key_for(task.pending.matted.generated.image.uri)
    parts.store.put_bytes(key, b"\x89PNG tampered")
    response = client.get(f"/tasks/{task.task_id}/images/generated")
    assert response.status_code == 502 and "checksum_mismatch" in response.text


# -- intake -----------------------------------------------------------------------------------


def test_redelivered_event_does_not_make_a_second_task(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    envelope = pending_envelope(flagged_item(parts.store, 0))
    assert parts.tasks.add_pending(envelope) is True
    assert parts.tasks.add_pending(envelope) is False
    # Also after a restart: the table is on disk, and the copy is still recognised.
    reopened = TaskStore(parts.tasks.path)
    assert reopened.add_pending(envelope) is False
    assert reopened.counts()["pending"] == 1 and len(reopened.audit()) == 1
    # Even after a decision, a late copy does not reopen the item.
    reopened.claim(envelope.event_id, "alice", 60)
    assert reopened.add_pending(envelope) is False
    assert reopened.counts() == {
        "pending": 0,
        "claimed": 1,
        "approved": 0,
        "rejected": 0,
        "withdrawn": 0,
        "accepted": 0,
    }


def test_a_replayed_gate_decision_shows_its_newest_reasons_on_an_open_task_only(tmp_path: Path) -> None:
    """The gate replayed after a threshold change publishes the item's correction.pending again under
    the same event id (its input's, key "decision"), with other reasons and figures. A task still open
    shows the newest ones, and a decision carries them; a decided task is left as it was decided."""
    parts = build_console(tmp_path)
    first = pending_envelope(flagged_item(parts.store, 0))
    decided = pending_envelope(flagged_item(parts.store, 1))
    for envelope in (first, decided):
        parts.tasks.add_pending(envelope)
    decide_as_alice(parts, decided.event_id, "reject", "not the product")

    def replayed(envelope: Any) -> Any:
        payload = envelope.payload.model_copy(update={"reasons": ["mask_touches_border"], "iou": 0.5})
        return envelope.model_copy(update={"payload": payload})

    parts.tasks.claim(first.event_id, "bob", 60)  # a reviewer is looking at it meanwhile
    for envelope in (first, decided):
        assert parts.tasks.add_pending(replayed(envelope)) is False, "no second task"
    task = parts.tasks.get(first.event_id)
    assert (task.reasons, task.iou, task.state, task.claimed_by) == (
        ["mask_touches_border"],
        0.5,
        "claimed",
        "bob",
    )
    assert task.pending.reasons == ["mask_touches_border"]
    assert [t.task_id for t in parts.tasks.query(TaskFilter(reason="mask_touches_border", state=None))] == [
        first.event_id
    ]
    closed = parts.tasks.get(decided.event_id)
    assert (closed.state, closed.reasons, closed.pending) == (
        "rejected",
        decided.payload.reasons,
        decided.payload,
    )
    # A copy of the newest delivered again changes nothing, and leaves no second audit entry.
    trail = parts.tasks.audit(first.event_id)
    parts.tasks.add_pending(replayed(first))
    assert parts.tasks.audit(first.event_id) == trail


def test_an_older_copy_of_a_gate_decision_delivered_late_does_not_bring_back_its_reasons(
    tmp_path: Path,
) -> None:
    """The gate replayed publishes newer reasons; the first copy, parked in the dead-letter topic and
    replayed afterwards, arrives last. The task keeps the newer verdict, also in a table created
    before the event time was stored."""
    parts = build_console(tmp_path)
    first = pending_envelope(flagged_item(parts.store, 0))
    payload = first.payload.model_copy(update={"reasons": ["mask_touches_border"], "iou": 0.5})
    later = first.produced_at + timedelta(hours=1)
    newer = first.model_copy(update={"payload": payload, "produced_at": later})
    parts.tasks.add_pending(newer)
    trail = parts.tasks.audit(first.event_id)

    assert parts.tasks.add_pending(first) is False
    task = parts.tasks.get(first.event_id)
    assert (task.reasons, task.iou, task.pending) == (["mask_touches_border"], 0.5, payload)
    assert parts.tasks.audit(first.event_id) == trail, "nothing changed, nothing audited"

    # A table from before produced_at (and before 'withdrawn') opens with its rows and then compares.
    old = tmp_path / "old.sqlite3"
    before = _SCHEMA.replace(",\n    produced_at      REAL", "").replace(", 'withdrawn'", "")
    assert "produced_at" not in before
    db = sqlite3.connect(old)
    db.executescript(before)
    db.execute("ATTACH DATABASE ? AS current", (str(parts.tasks.path),))
    columns = ", ".join(name for (name,) in db.execute("SELECT name FROM pragma_table_info('tasks')"))
    db.execute(f"INSERT INTO tasks SELECT {columns} FROM current.tasks")
    db.commit()
    db.close()
    reopened = TaskStore(old)
    assert reopened.get(first.event_id).reasons == ["mask_touches_border"]
    reopened.add_pending(first)  # its time is unknown: taken, as before
    reopened.add_pending(newer)
    reopened.add_pending(first)
    assert reopened.get(first.event_id).reasons == ["mask_touches_border"]


def test_intake_handler_emits_nothing_and_queues_once(tmp_path: Path) -> None:
    import logging

    from shared.observability import StageMetrics
    from shared.runtime import Context

    parts = build_console(tmp_path)
    envelope = pending_envelope(flagged_item(parts.store, 1))
    ctx = Context(
        stage="console-intake",
        store=parts.store,
        settings=parts.console.settings,
        metrics=StageMetrics("console-intake"),
        log=logging.getLogger("test"),
    )
    assert intake_handle(envelope, ctx, tasks=parts.tasks) == []
    assert intake_handle(envelope, ctx, tasks=parts.tasks) == []
    assert [t.task_id for t in parts.tasks.query()] == [envelope.event_id]


def test_task_table_uses_wal(parts: ConsoleParts) -> None:
    import sqlite3

    with sqlite3.connect(parts.tasks.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_reject_reason_that_is_not_valid_text_is_refused() -> None:
    """A form sent as utf-7 decodes '+2AA-' to a lone surrogate, which passed the printable check and
    was a 500 when the database stored the audit line."""
    from services.console.decisions import DecisionInvalid, check_reject_reason

    with pytest.raises(DecisionInvalid, match="not valid text"):
        check_reject_reason("wrong product \ud800")
    assert check_reject_reason("wrong_product: a can, not a box") == "wrong_product: a can, not a box"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x9b"])
def test_a_reject_reason_is_one_line(separator: str) -> None:
    # The check refused C0 controls only: a Unicode line separator or a C1 control (NEL, CSI) split
    # the "single-line" reason in the audit trail and the correction event.
    from services.console.decisions import DecisionInvalid, check_reject_reason

    with pytest.raises(DecisionInvalid, match="control characters"):
        check_reject_reason(f"label cut off{separator}second line")
    assert check_reject_reason("étiquette coupée — 50%") == "étiquette coupée — 50%"


@pytest.mark.parametrize("field", ["decision", "reject_reason"])
def test_a_form_field_that_is_not_valid_text_is_a_422_with_a_reason(
    parts: ConsoleParts, client: TestClient, field: str
) -> None:
    """A multipart body declared charset=utf-7 decodes '+2AA-' to a lone surrogate: the field was refused
    by validation, whose default answer echoes the value and could not be encoded: a bare 500."""
    token = login(client)
    task_id = first_task_id(parts)
    claim(client, token, task_id)
    fields = {"decision": b"reject", "reject_reason": b"wrong_product", field: b"+2AA-"}
    body = b"".join(
        b'--B\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value + b"\r\n"
        for name, value in fields.items()
    )
    response = client.post(
        f"/api/tasks/{task_id}/decision",
        content=body + b"--B--\r\n",
        headers={"X-CSRF-Token": token, "Content-Type": "multipart/form-data; charset=utf-7; boundary=B"},
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field] and "unicode" in error["msg"]
    assert parts.tasks.get(task_id).state == "claimed"
