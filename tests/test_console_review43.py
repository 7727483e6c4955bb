"""Bad input to the console's web routes answers with a 4xx that says what was wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.console import decide, one_task


@pytest.mark.parametrize("shown", ["not-a-digest", "F" * 16, "0" * 64])
def test_a_decision_whose_shown_is_no_digest_is_refused_as_invalid_not_as_a_replay(
    shown: str, tmp_path: Path
) -> None:
    # Before, any ``shown`` other than the task's digest was a 409 saying a replay of the gate changed
    # the item since the page showed it, and to reload: a script sending a malformed one was told to
    # reload a page it never had.
    parts, task, client, token = one_task(tmp_path)
    response = decide(client, token, task.task_id, decision="approve_expected", shown=shown)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "shown"]
    assert parts.tasks.get(task.task_id).state == "claimed"


def test_a_reject_reason_that_is_not_utf8_is_refused_not_stored_with_replacement_marks(
    tmp_path: Path,
) -> None:
    # Before, a url-encoded reason with bytes that are not UTF-8 (%E9: latin-1 "é") was stored with
    # U+FFFD in their place, silently: the reason the trainstore and the audit kept was not the one sent.
    parts, task, client, token = one_task(tmp_path)
    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        content=b"decision=reject&reject_reason=caf%E9",
        headers={"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422, response.text
    assert "reject_reason" in response.json()["detail"]
    assert parts.tasks.get(task.task_id).state == "claimed"

    # The page's multipart form, in UTF-8, keeps working.
    response = decide(client, token, task.task_id, decision="reject", reject_reason="café")
    assert response.status_code == 200, response.text
    assert response.json()["resolved"]["reject_reason"] == "café"


def test_a_decision_with_two_mask_files_is_refused_not_decided_on_the_last(tmp_path: Path) -> None:
    # Before, the second mask silently replaced the first: which one was saved depended on the order a
    # script happened to send them in.
    parts, task, client, token = one_task(tmp_path)
    mask = ("mask.png", parts.store.read_verified(task.pending.matted.generated.expected_mask), "image/png")
    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data={"decision": "approve_edited"},
        files=[("mask", mask), ("mask", mask)],
        headers={"X-CSRF-Token": token},
    )
    assert response.status_code == 422, response.text
    assert "mask" in str(response.json()["detail"])
    assert parts.tasks.get(task.task_id).state == "claimed"


@pytest.mark.parametrize("action", ["claim", "release"])
def test_the_claim_and_release_forms_refuse_malformed_queue_filters(action: str, tmp_path: Path) -> None:
    # Before, they carried ``sku=%00`` into the redirect unchecked, and the item page's "next" (or the
    # queue) then answered a 422 for a form the person never filled in.
    parts, task, client, token = one_task(tmp_path, claimed=action == "release")
    queue = client.get("/?sku=%00")
    response = client.post(
        f"/tasks/{task.task_id}/{action}?sku=%00", data={"csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == queue.status_code == 422, response.text
    assert response.json() == queue.json()
    assert parts.tasks.get(task.task_id).state == ("pending" if action == "claim" else "claimed")
