"""The console's JSON API, for the item page's JavaScript and for scripts.

``GET /api/tasks`` (queue and counts), ``GET /api/tasks/{id}`` (task and audit trail), ``POST
/api/tasks/{id}/claim|renew|release``, ``POST /api/claim-next``, and ``POST /api/tasks/{id}/decision``
(approve / edit / reject: the rules are in ``decisions.py``). Every POST needs the CSRF token;
``GET /api/csrf`` gives the current session's, so an open page carries on after a new login.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from schemas.events import Decision
from services.console.auth import Reviewer, current_session
from services.console.context import ConsoleDep, Filters, TaskId
from services.console.decisions import DecisionInvalid, record_decision
from services.console.tasks import Task
from shared.observability import escape_control_characters

router = APIRouter(prefix="/api")


@router.get("/tasks")
def api_tasks(
    console: ConsoleDep, filters: Filters, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> dict[str, Any]:
    refused = console.tasks.refused_reasons()
    return {
        "counts": console.tasks.counts(),
        "tasks": [
            task_json(task, refused.get(task.task_id)) for task in console.tasks.query(filters, limit=limit)
        ],
    }


@router.get("/csrf")
def api_csrf(request: Request) -> dict[str, str]:
    """The session's CSRF token: a page rendered under an earlier session (logged out and in again in
    another tab, or the session expired) fetches it and retries, instead of losing its painted mask."""
    return {"csrf_token": current_session(request).csrf_token}


@router.get("/tasks/{task_id}")
def api_task(task_id: TaskId, console: ConsoleDep) -> dict[str, Any]:
    task = console.tasks.get(task_id)
    outbox = console.tasks.outbox(task_id)
    return {
        **task_json(task, outbox.refused_reason if outbox else None),
        # Stored text shown escaped, as on the item page: an entry's detail or reviewer stored before the
        # console refused such text, and a decision recorded before review 48 (read as stored).
        "audit": [_escaped(entry.__dict__) for entry in console.tasks.audit(task_id)],
        "resolved": _escaped(outbox.payload.model_dump(mode="json")) if outbox else None,
        "published": bool(outbox and outbox.published_at),
    }


@router.post("/tasks/{task_id}/claim")
def api_claim(task_id: TaskId, console: ConsoleDep, session: Reviewer) -> dict[str, Any]:
    return task_json(console.tasks.claim(task_id, session.reviewer, console.console.console_lease_s))


@router.post("/tasks/{task_id}/renew")
def api_renew(task_id: TaskId, console: ConsoleDep, session: Reviewer) -> dict[str, Any]:
    console.tasks.check_held(task_id, session.reviewer)
    return task_json(console.tasks.claim(task_id, session.reviewer, console.console.console_lease_s))


@router.post("/tasks/{task_id}/release")
def api_release(task_id: TaskId, console: ConsoleDep, session: Reviewer) -> dict[str, Any]:
    return task_json(console.tasks.release(task_id, session.reviewer))


@router.post("/claim-next")
def api_claim_next(console: ConsoleDep, session: Reviewer, filters: Filters) -> dict[str, Any]:
    task = console.tasks.claim_next(session.reviewer, console.console.console_lease_s, filters)
    return {"task": task_json(task) if task else None}


@router.post("/tasks/{task_id}/decision")
def api_decision(
    task_id: TaskId,
    console: ConsoleDep,
    session: Reviewer,
    decision: Annotated[Decision, Form()],
    reject_reason: Annotated[str | None, Form(max_length=1000)] = None,
    # A list, so a second file is seen: a single field took the last one sent, silently.
    mask: Annotated[list[UploadFile] | None, File()] = None,
    # ``shown_pixels``' digest: any other text was a 409 telling the sender a replay changed the item.
    shown: Annotated[str | None, Form(pattern=r"^[0-9a-f]{16}$")] = None,
) -> dict[str, Any]:
    # A reason that is not UTF-8 text (url-encoded or multipart) is refused before: ``formtext``.
    if mask is not None and len(mask) > 1:
        raise DecisionInvalid(f"mask: one file, not {len(mask)}")
    # The form was capped by its Content-Length before it was spooled (auth.limit_bodies); one byte
    # past the image limit is read, so a mask over it is refused by the size check that names it.
    mask_bytes = None if not mask else mask[0].file.read(console.settings.max_image_bytes + 1)
    task, event = record_decision(
        console.tasks,
        console.store,
        task_id=task_id,
        reviewer=session.reviewer,
        decision=decision,
        reject_reason=reject_reason,
        mask_bytes=mask_bytes,
        max_pixels=console.settings.max_image_pixels,
        max_bytes=console.settings.max_image_bytes,
        shown=shown,
    )
    if task.claimed_at is not None and task.claimed_by == session.reviewer:
        # Their own claim's time to decision: a task the gate accepted keeps the claim it had then, and
        # another reviewer's rejection of it was counted from that claim.
        console.metrics.decision_seconds.observe(max(0.0, event.created_at - task.claimed_at))
    console.metrics.task_age_seconds.observe(max(0.0, event.created_at - task.received_at))
    if console.relay is not None:
        console.relay.notify()
    return {
        "task_id": task_id,
        "state": "rejected" if decision == "reject" else "approved",
        "event_id": event.event_id,
        "resolved": event.payload.model_dump(mode="json"),
    }


def task_json(task: Task, refused: str | None = None) -> dict[str, Any]:
    """A task as the API shows it; ``refused``: the broker's reason its decision was set aside for good
    (a claim's answer has none: a task with a decision is not claimed)."""
    return {
        "task_id": task.task_id,
        "sku_id": task.sku_id,
        "item_id": task.item_id,
        "iou": task.iou,
        "reasons": task.reasons,
        "state": task.state,
        "received_at": task.received_at,
        "claimed_by": task.claimed_by,
        "lease_expires_at": task.lease_expires_at,
        "decision": task.decision,
        "decided_by": task.decided_by,
        "decided_at": task.decided_at,
        "refused": refused,
    }


def _escaped(shown: Any) -> Any:
    """``shown`` (JSON) with every string's control characters and bidi controls escaped, as the item
    page shows stored text: a decision stored before review 48 reads as stored (``TaskStore.outbox``), so
    an object's URI in it held a raw U+202E or C1 control; an audit entry is the table's text as stored.
    Text escaped when read is unchanged (the escape adds no character it escapes)."""
    if isinstance(shown, str):
        return escape_control_characters(shown)
    if isinstance(shown, dict):
        return {key: _escaped(value) for key, value in shown.items()}
    if isinstance(shown, list):
        return [_escaped(value) for value in shown]
    return shown
