"""Console defects a reviewer or operator would hit: the queue's filter form, the login redirect, garbage
cookies, an HTTPS proxy, a losing decision overwriting the winner's mask, Label Studio's multi-line
reasons and malformed exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.console.config import ConsoleSettings
from services.console.decisions import mask_from_ref, record_decision
from services.console.labelstudio import export_tasks, import_annotations, mask_to_rle
from services.console.tasks import Task, TaskConflict
from shared.images import decode_mask, encode_png
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
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
        parts.clock.advance(1.0)
    return parts


@pytest.fixture
def client(parts: ConsoleParts) -> TestClient:
    return TestClient(app_for(parts), base_url="http://console.test")


def test_the_queue_filter_form_with_blank_fields_filters_nothing_out(
    parts: ConsoleParts, client: TestClient
) -> None:
    token = login(client)
    # What the queue page's filter form submits when only the reason is chosen: every field, blank or not.
    blank = "sku=&reason=&iou_min=&iou_max=&state=pending"
    page = client.get(f"/?{blank}")
    assert page.status_code == 200, page.text
    assert page.text.count("data-task-id=") == 3
    drift = client.get("/?sku=&reason=product_drift&iou_min=&iou_max=&state=pending")
    assert drift.status_code == 200 and drift.text.count("data-task-id=") == 1
    assert len(client.get(f"/api/tasks?{blank}").json()["tasks"]) == 3
    # "claim next" posts to the queue's own query string.
    claimed = client.post(f"/claim-next?{blank}", data={"csrf_token": token}, follow_redirects=False)
    assert claimed.status_code == 303 and claimed.headers["location"].startswith("/tasks/")
    # Filled-in fields are still checked, with the reason.
    for query, fragment in [("iou_min=x", "iou_min"), ("iou_max=nan", "iou_max"), ("reason=A", "a-z, 0-9")]:
        refused = client.get(f"/api/tasks?{query}")
        assert refused.status_code == 422 and fragment in refused.text, query


def test_login_returns_to_the_page_with_its_whole_query(client: TestClient) -> None:
    wanted = "/?sku=SKU-1&state=all"
    redirect = client.get(wanted, headers={"accept": "text/html"}, follow_redirects=False)
    assert redirect.status_code == 303
    assert parse_qs(urlsplit(redirect.headers["location"]).query)["next"] == [wanted]
    form = client.get(redirect.headers["location"])
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', form.text)
    assert nonce and 'name="next" value="/?sku=SKU-1&amp;state=all"' in form.text
    fields = {"reviewer": "alice", "login_nonce": nonce.group(1), "next": wanted}
    wrong = client.post("/login", data={**fields, "password": "guess"}, follow_redirects=False)
    assert parse_qs(urlsplit(wrong.headers["location"]).query)["next"] == [wanted]
    ok = client.post("/login", data={**fields, "password": "alice-password"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == wanted


def test_a_non_ascii_session_cookie_is_no_login_not_a_server_error(parts: ConsoleParts) -> None:
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    cookie = "skuforge_console=e30=.\u00e9\u00e9".encode()
    api = client.get("/api/tasks", headers={b"cookie": cookie})
    assert api.status_code == 401
    page = client.get("/", headers={b"cookie": cookie, b"accept": b"text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_login_and_decisions_work_behind_an_https_proxy(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    parts.console.console = ConsoleSettings(
        console_users="alice:alice-password", console_cookie_secure=True, console_db_path="unused"
    )
    # The proxy ends TLS and forwards plain HTTP with the browser's Host; the browser's Origin is https.
    client = TestClient(app_for(parts), base_url="http://console.test")
    https = {"Origin": "https://console.test"}
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', client.get("/login").text)
    assert nonce
    # The cookies are Secure: the browser (over HTTPS) sends them back; TestClient talks http.
    client.cookies.set("skuforge_console_login", nonce.group(1))
    fields = {"reviewer": "alice", "password": "alice-password", "login_nonce": nonce.group(1)}
    response = client.post("/login", data=fields, headers=https, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/", response.text
    session = response.cookies["skuforge_console"]
    client.cookies.set("skuforge_console", session)
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert token
    claimed = client.post("/api/claim-next", headers={**https, "X-CSRF-Token": token.group(1)})
    assert claimed.status_code == 200 and claimed.json()["task"]["claimed_by"] == "alice"
    # Other sites are still refused.
    evil = {"Origin": "https://evil.example", "X-CSRF-Token": token.group(1)}
    assert client.post("/api/claim-next", headers=evil).status_code == 403


def test_a_losing_decision_does_not_overwrite_the_recorded_mask(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = parts.tasks.query()[0]
    predicted = mask_from_ref(parts.store, task.pending.matted.predicted_mask)
    alice_mask = predicted.copy()
    alice_mask[0:40, 0:40] = 255
    bob_mask = predicted.copy()
    bob_mask[80:120, 80:120] = 255

    def decide_edited(reviewer: str, mask: np.ndarray) -> Any:
        return record_decision(
            parts.tasks,
            parts.store,
            task_id=task.task_id,
            reviewer=reviewer,
            decision="approve_edited",
            mask_bytes=encode_png(mask),
            reject_reason=None,
            max_pixels=10_000_000,
            max_bytes=10_000_000,
        )

    # Alice's request passes its hold check; while it uploads, her lease runs out and Bob claims the
    # item and approves his own edit. Then Alice's request carries on.
    parts.tasks.claim(task.task_id, "alice", 60.0)
    check_held = parts.tasks.check_held

    def slow_check(task_id: str, reviewer: str, **kwargs: bool) -> Task:
        held = check_held(task_id, reviewer, **kwargs)
        if reviewer == "alice":
            parts.clock.advance(61.0)
            parts.tasks.claim(task.task_id, "bob", 60.0)
            decide_edited("bob", bob_mask)
        return held

    monkeypatch.setattr(parts.tasks, "check_held", slow_check)
    with pytest.raises(TaskConflict):
        decide_edited("alice", alice_mask)

    recorded = parts.tasks.outbox(task.task_id)
    assert recorded is not None and recorded.payload.reviewer == "bob"
    final = recorded.payload.final_mask
    assert final is not None
    # Bob's recorded decision still points at Bob's mask, intact (trainstore reads it verified).
    assert np.array_equal(decode_mask(parts.store.read_verified(final)), bob_mask)


def test_label_studio_multi_line_reject_reason_is_imported(parts: ConsoleParts) -> None:
    [first, second, *_] = export_tasks(parts.tasks, parts.store).tasks
    first["annotations"] = [
        {
            "completed_by": 7,
            "result": [
                {"type": "choices", "from_name": "decision", "value": {"choices": ["reject"]}},
                {"type": "textarea", "from_name": "reason", "value": {"text": ["blurry\nand cut off"]}},
            ],
        }
    ]
    second["annotations"] = [
        {
            "completed_by": 7,
            "result": [
                {"type": "choices", "from_name": "decision", "value": {"choices": ["reject"]}},
                {"type": "textarea", "from_name": "reason", "value": {"text": ["bell\x07"]}},
            ],
        }
    ]
    outcomes = import_annotations(parts.tasks, parts.store, [first, second])
    assert (outcomes[0].outcome, outcomes[0].detail) == ("reject", "blurry and cut off")
    assert outcomes[1].outcome == "skipped" and "control characters" in outcomes[1].detail
    # A refused annotation leaves the item to the web reviewers: no stray Label Studio claim.
    refused = parts.tasks.get(second["data"]["skuforge_task_id"])
    assert refused.state == "pending" and refused.claimed_by is None


def _some_product() -> np.ndarray:
    """A brush mask with product pixels (an empty one is refused, as the web page refuses it)."""
    mask = np.zeros((128, 128), np.uint8)
    mask[20:90, 30:100] = 255
    return mask


# A stroke of the product mask's control, as Label Studio exports it (other controls are not imported).
_PRODUCT_STROKE = {"type": "brushlabels", "from_name": "mask", "to_name": "image"}


@pytest.mark.parametrize(
    "annotation",
    [
        {"result": [{**_PRODUCT_STROKE, "value": {"format": "rle", "brushlabels": ["product"]}}]},  # no rle
        {
            "result": [
                {**_PRODUCT_STROKE, "value": {"format": "rle", "rle": ["a"], "brushlabels": ["product"]}}
            ]
        },
        {"result": ["not an object"]},
        {"result": {"not": "a list"}},
    ],
)
def test_a_malformed_label_studio_annotation_is_skipped_not_a_crash(
    parts: ConsoleParts, annotation: dict[str, Any]
) -> None:
    [task, *_] = export_tasks(parts.tasks, parts.store).tasks
    good = dict(
        export_tasks(parts.tasks, parts.store).tasks[1],
        annotations=[
            {
                "result": [
                    {
                        **_PRODUCT_STROKE,
                        "value": {
                            "format": "rle",
                            "rle": mask_to_rle(_some_product()),
                            "brushlabels": ["product"],
                        },
                    }
                ]
            }
        ],
    )
    odd_entries = [{"data": ["not", "an", "object"]}, dict(task, annotations=["not an object"])]
    outcomes = import_annotations(
        parts.tasks, parts.store, [dict(task, annotations=[annotation]), *odd_entries, good]
    )
    assert [o.outcome for o in outcomes] == ["skipped", "skipped", "skipped", "approve_edited"]
    assert parts.tasks.get(task["data"]["skuforge_task_id"]).state == "pending"


def test_export_labelstudio_refuses_a_bad_image_url_or_out_path_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from skuforge_cli.main import main as cli_main

    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(parts.tasks.path))
    out = tmp_path / "tasks.json"
    typo = ["console", "export-labelstudio", "--out", str(out), "--image-url", "https://img/{path}"]
    with pytest.raises(SystemExit) as exited:
        cli_main(typo)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--image-url" in err and "'path'" in err and "{key}" in err
    assert not out.exists()
    missing_dir = ["console", "export-labelstudio", "--out", str(tmp_path / "no" / "such" / "tasks.json")]
    assert cli_main(missing_dir) == 2
    assert "cannot write" in capsys.readouterr().err


# -- found in review, 2026-12-02 ----------------------------------------------------------------


def _spoil(parts: ConsoleParts, table: str, task_id: str) -> None:
    """Make one stored row unreadable, as a row stored under a schema a later version refuses is."""
    import json
    import sqlite3

    column = "pending_json" if table == "tasks" else "payload_json"
    db = sqlite3.connect(parts.tasks.path)
    stored = json.loads(
        db.execute(f"SELECT {column} FROM {table} WHERE task_id = ?", (task_id,)).fetchone()[0]
    )
    stored["iou"] = "not a number"
    db.execute(f"UPDATE {table} SET {column} = ? WHERE task_id = ?", (json.dumps(stored), task_id))
    db.commit()
    db.close()


def test_one_unreadable_task_leaves_the_queue_and_the_relay_working(parts: ConsoleParts) -> None:
    # Before, one row that no longer validated made the queue page, /api/tasks and claim-next 500 for
    # every reviewer, and one such decision in the outbox stopped the relay publishing any other.
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    token = login(client)
    ids = [task.task_id for task in parts.tasks.query()]
    _spoil(parts, "tasks", ids[0])
    assert client.get("/").status_code == 200
    listed = client.get("/api/tasks").json()["tasks"]
    assert sorted(task["task_id"] for task in listed) == sorted(ids[1:])
    claimed = client.post("/api/claim-next", headers={"X-CSRF-Token": token})
    assert claimed.status_code == 200 and claimed.json()["task"]["task_id"] == ids[1]
    page = client.get(f"/api/tasks/{ids[0]}")
    assert page.status_code == 502 and "no longer reads" in page.text
    assert parts.tasks.counts()["pending"] == 2  # still counted: the backlog alert sees it
    for task_id in ids[1:]:
        decide_as_alice(parts, task_id, "reject", "blurry")
    _spoil(parts, "outbox", ids[1])
    assert [event.task_id for event in parts.tasks.unpublished()] == [ids[2]]
    assert parts.tasks.unpublished_count() == 2


def test_claim_next_on_ones_own_claim_renews_its_lease(parts: ConsoleParts) -> None:
    # Before, "claim next" sent the reviewer back to a held task with what was left of its lease (2 s
    # here); the page's first renewal came 20 s later, and the save found the lease expired.
    held = parts.tasks.claim_next("alice", 60.0)
    assert held is not None
    parts.clock.advance(58.0)
    again = parts.tasks.claim_next("alice", 60.0)
    assert again is not None and again.task_id == held.task_id
    assert again.lease_expires_at == pytest.approx(parts.clock() + 60.0, abs=0.01)


def test_an_approval_of_a_mask_missing_from_the_store_is_refused_not_recorded(parts: ConsoleParts) -> None:
    # Before, approve_expected of a deleted mask was recorded and published (the trainstore then
    # dead-lettered it) and the task, now approved, could not be reviewed again.
    client = TestClient(app_for(parts), base_url="http://console.test", raise_server_exceptions=False)
    token = login(client)
    task = parts.tasks.query()[0]
    parts.store.delete(parts.store.key_for(task.pending.matted.generated.expected_mask.uri))
    headers = {"X-CSRF-Token": token}
    assert client.post(f"/api/tasks/{task.task_id}/claim", headers=headers).status_code == 200
    refused = client.post(
        f"/api/tasks/{task.task_id}/decision", headers=headers, data={"decision": "approve_expected"}
    )
    assert refused.status_code == 502 and "object_missing" in refused.text, refused.text
    assert parts.tasks.get(task.task_id).state == "claimed" and parts.tasks.outbox(task.task_id) is None
    approved = client.post(
        f"/api/tasks/{task.task_id}/decision", headers=headers, data={"decision": "approve_predicted"}
    )
    assert approved.status_code == 200, approved.text


def test_two_edited_masks_of_one_item_do_not_share_a_key(parts: ConsoleParts) -> None:
    # Before, the key had no content hash: the item flagged again under a new event and corrected
    # again replaced the first decision's mask, already published (its checksum then failed).
    first = parts.tasks.query()[0]
    again = pending_envelope(flagged_item(parts.store, 0, sku_id="SKU-0")).model_copy(
        update={"event_id": "e" * 32}
    )
    assert again.payload.matted.generated.item_id == first.item_id
    parts.tasks.add_pending(again)
    finals = []
    for task_id, value in ((first.task_id, 255), ("e" * 32, 0)):
        parts.tasks.claim(task_id, "alice", 60.0)
        held = parts.tasks.get(task_id)
        image = held.pending.matted.generated.image
        mask = np.full((image.height, image.width), value, np.uint8)
        mask[0, 0] = 255 - value
        _, event = record_decision(
            parts.tasks,
            parts.store,
            task_id=task_id,
            reviewer="alice",
            decision="approve_edited",
            reject_reason=None,
            mask_bytes=encode_png(mask),
            max_pixels=10**8,
            max_bytes=10**8,
        )
        assert event.payload.final_mask is not None
        finals.append(event.payload.final_mask)
    assert finals[0].uri != finals[1].uri
    for final in finals:
        parts.store.read_verified(final)


def test_logout_ends_the_session_and_a_removed_or_changed_reviewer_is_logged_out(parts: ConsoleParts) -> None:
    # Before, logout only deleted the browser's cookie (a copy worked for the rest of its 12 hours),
    # and a reviewer removed from SKUFORGE_CONSOLE_USERS, or whose password changed, kept access.
    import dataclasses

    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    cookie = client.cookies.get("skuforge_console")
    assert cookie
    copy = TestClient(app_for(parts), base_url="http://console.test", cookies={"skuforge_console": cookie})
    assert copy.get("/api/tasks").status_code == 200
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert copy.get("/api/tasks").status_code == 401
    restarted = dataclasses.replace(parts, console=dataclasses.replace(parts.console))
    copy_after_restart = TestClient(
        app_for(restarted), base_url="http://console.test", cookies={"skuforge_console": cookie}
    )
    assert copy_after_restart.get("/api/tasks").status_code == 401  # the table remembers it

    bob = TestClient(app_for(parts), base_url="http://console.test")
    login(bob, "bob")
    assert bob.get("/api/tasks").status_code == 200
    for users in ("alice:alice-password", "alice:alice-password,bob:a-new-password"):
        settings = parts.console.console.model_copy(update={"console_users": SecretStr(users)})
        changed = dataclasses.replace(parts.console, console=settings)
        again = TestClient(
            app_for(dataclasses.replace(parts, console=changed)), base_url="http://console.test"
        )
        again.cookies.set("skuforge_console", bob.cookies.get("skuforge_console") or "")
        assert again.get("/api/tasks").status_code == 401, users


def test_the_login_form_takes_only_a_small_url_encoded_body(client: TestClient) -> None:
    # Before, /login (served without a session) took a multipart body with a file part of any size,
    # written to disk whole before the fields were checked (200 MB: 422 after it was spooled).
    multipart = client.post(
        "/login",
        content=b'--xx\r\nContent-Disposition: form-data; name="junk"; filename="j"\r\n\r\n'
        + b"x" * 1000
        + b"\r\n--xx--\r\n",
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert multipart.status_code == 415
    large = client.post(
        "/login",
        content=b"reviewer=" + b"a" * 20_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert large.status_code == 413
    assert login(client)  # the form itself still works


def test_the_login_page_shows_only_its_own_error_messages(client: TestClient) -> None:
    # Before, ?error= text from any link was shown in the console's alert box (phishing on our origin).
    spoofed = client.get("/login?error=Password%20expired%3A%20call%20helpdesk-example.com")
    assert spoofed.status_code == 200 and "helpdesk-example.com" not in spoofed.text
    assert "wrong name or password" in client.get("/login?error=credentials").text
