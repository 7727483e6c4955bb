"""Review 49: a console task stored with a character in an object's URI that the contract refuses since
review 48 (a control character, a line separator, a bidirectional control) stays in view, shown escaped;
what cannot be done with it (a decision, which would embed the URI in a ``correction.resolved``) is
refused naming the field and the code point, and the task waits as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from schemas.common import READ_FROM_TOPIC
from schemas.events import CorrectionPending
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    claim,
    decide,
    flagged_item,
    login,
    pending_envelope,
)

# What the contract refuses in a uri since review 48: a bidirectional override, a terminal escape, a line
# separator.
REFUSED = [("\u202e", "U+202E"), ("\x1b", "U+001B"), ("\u2028", "U+2028")]
IDS = ["bidi", "escape", "line_separator"]
FIELD = "matted.generated.expected_mask.uri"


def _stored_with(tmp_path: Path, char: str) -> tuple[ConsoleParts, str, str]:
    """A console whose one task was stored (before review 48) with ``char`` in its expected mask's uri;
    the task's id and that uri."""
    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    generated = pending.matted.generated
    # Made by hand: the store refuses such a key now, and the contract such a uri.
    uri = generated.expected_mask.uri.replace(".png", f"{char}gnp.png")
    expected = generated.expected_mask.model_copy(update={"uri": uri})
    matted = pending.matted.model_copy(
        update={"generated": generated.model_copy(update={"expected_mask": expected})}
    )
    envelope = pending_envelope(pending.model_copy(update={"matted": matted}))
    parts.tasks.add_pending(envelope)
    return parts, envelope.event_id, uri


@pytest.mark.parametrize(("char", "named"), REFUSED, ids=IDS)
def test_a_task_stored_with_one_stays_in_view_with_its_uri_as_stored(
    tmp_path: Path, char: str, named: str
) -> None:
    # Since review 48 such a task no longer read: left out of the queue with a log line, accepted work
    # no reviewer saw again. Its uri is kept as stored (escaped, it would name another object).
    parts, task_id, uri = _stored_with(tmp_path, char)
    listed = parts.tasks.query()
    assert [task.task_id for task in listed] == [task_id]
    assert listed[0].pending.matted.generated.expected_mask.uri == uri
    assert parts.tasks.count() == 1

    with TestClient(app_for(parts)) as client:
        login(client)
        pages = [client.get("/"), client.get(f"/tasks/{task_id}"), client.get("/api/tasks")]
        pages.append(client.get(f"/api/tasks/{task_id}"))
    for page in pages:
        assert page.status_code == 200, page.text
        assert task_id in page.text
        assert char not in page.text


def test_a_topic_read_still_refuses_such_a_uri(tmp_path: Path) -> None:
    # Only the console's stored task reads it: an event holding one is dead-lettered (review 48).
    parts, task_id, _ = _stored_with(tmp_path, "\u202e")
    stored = parts.tasks.get(task_id).pending.model_dump_json()
    with pytest.raises(ValueError, match=r"expected_mask\.uri"):
        CorrectionPending.model_validate_json(stored, context=READ_FROM_TOPIC)


@pytest.mark.parametrize(("char", "named"), REFUSED, ids=IDS)
@pytest.mark.parametrize("decision", ["reject", "approve_expected", "approve_predicted"])
def test_a_decision_on_it_is_refused_naming_the_field_and_the_character(
    tmp_path: Path, char: str, named: str, decision: str
) -> None:
    # A decision embeds the task's event in correction.resolved: recorded, it was set aside unsent (a
    # decision that no longer reads) or dead-lettered downstream, and the task closed to review.
    parts, task_id, _ = _stored_with(tmp_path, char)
    form = {"decision": decision, "reject_reason": "wrong_product" if decision == "reject" else None}
    with TestClient(app_for(parts)) as client:
        token = login(client)
        claim(client, token, task_id)
        answer = decide(client, token, task_id, **{k: v for k, v in form.items() if v is not None})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert FIELD in detail and named in detail and char not in detail
    assert "no decision on it can be sent" in detail
    task = parts.tasks.get(task_id)
    assert task.state == "claimed" and task.decision is None
    assert parts.tasks.outbox(task_id) is None


def test_claim_next_passes_over_it_so_next_is_not_stuck_on_it(tmp_path: Path) -> None:
    # Oldest, it was handed out by every "next": refused, released, and handed out again, for everyone.
    parts, task_id, _ = _stored_with(tmp_path, "\u202e")
    assert parts.tasks.claim_next("alice", 60.0) is None
    later = flagged_item(parts.store, 1)
    parts.tasks.add_pending(pending_envelope(later))
    handed = parts.tasks.claim_next("alice", 60.0)
    assert handed is not None and handed.task_id != task_id
    assert [task.task_id for task in parts.tasks.query()] == [task_id]  # still in the queue, waiting
