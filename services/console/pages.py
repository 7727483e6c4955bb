"""The console's pages (server-rendered HTML): the queue, the item page, its images, static files.

Form posts (claim, claim the next, release) redirect back to a page, a refused one (someone else
claimed the item first, the lease is gone) to the queue with the reason; decisions are sent by the
item page's JavaScript to the API (``api.py``), which answers a conflict with a 409.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from schemas.common import ImageRef
from services.console.auth import Reviewer, current_session
from services.console.context import HERE, Console, ConsoleDep, Filters, TaskId, queue_filter, templates
from services.console.decisions import REJECT_REASONS, shown_pixels
from services.console.security import Session
from services.console.tasks import CLOSED, STATES, Task, TaskConflict

STATIC_FILES = {"console.css": "text/css", "item.js": "text/javascript", "queue.js": "text/javascript"}
# An image's media type comes from an event: anything else (text/html, image/svg+xml with its scripts)
# would be rendered as a document of the console's origin, so it is served as opaque bytes.
IMAGE_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff"})
# Rows the queue page shows; it says "showing N of M" when more match.
QUEUE_PAGE_LIMIT = 200
# The queue page's notes to the person (not filters): nothing left to claim, a form post refused
# (with the tag that shows the server wrote it for this session: ``SessionSigner.note_tag``).
NOTES = frozenset({"empty", "refused", "refused_tag"})
ImageKind = Literal["generated", "predicted", "expected", "reference", "corrected"]

router = APIRouter()


@router.get("/")
def queue_page(request: Request, console: ConsoleDep, filters: Filters) -> Response:
    session = current_session(request)
    listed = console.tasks.query(filters, limit=QUEUE_PAGE_LIMIT)
    return templates.TemplateResponse(
        request,
        "queue.html",
        {
            "session": session,
            "counts": console.tasks.counts(),
            "states": STATES,
            "closed": CLOSED,
            "tasks": listed,
            # Counted only for a full page, the only one that may be cut: a shorter one lists every match
            # that reads, and the count read every matching row again (for "all", every task ever queued).
            "matching": console.tasks.count(filters) if len(listed) == QUEUE_PAGE_LIMIT else len(listed),
            "filters": filters,
            "reasons": console.tasks.reasons(),
            "now": console.tasks.clock(),
            # The filters without the page's notes, for the links and forms that carry them on.
            "query": _filters_query(request),
            "nothing_to_claim": request.query_params.get("empty") == "1",
            "refused": _refusal(request, console, session),
            # The broker's reason, by task, for each decision it refused: without it the row read as sent.
            "refused_decisions": console.tasks.refused_reasons(),
        },
    )


def _refusal(request: Request, console: Console, session: Session) -> str:
    """The refusal the address carries, if the server made it for this session; else nothing. The
    address is a link anyone can send: shown as it came, a crafted one put its own text ("your session
    expired, log in at ...") in the console's status line."""
    note = request.query_params.get("refused", "")
    tag = request.query_params.get("refused_tag", "")
    return note if note and console.signer.is_note_for(session, note, tag) else ""


def _filters_query(request: Request) -> str:
    """The request's query string without the queue page's notes: the queue's filters."""
    return urlencode([(key, value) for key, value in request.query_params.multi_items() if key not in NOTES])


def _with_filters(path: str, request: Request) -> str:
    """``path`` with the queue's filters, which the item page's "next" reads: without them, "next"
    claimed the oldest item of any SKU or reason."""
    query = _filters_query(request)
    return f"{path}?{query}" if query else path


@router.post("/claim-next")
def claim_next_form(request: Request, console: ConsoleDep, session: Reviewer, filters: Filters) -> Response:
    task = console.tasks.claim_next(session.reviewer, console.console.console_lease_s, filters)
    if task is None:
        query = _filters_query(request)
        return RedirectResponse(f"/?{query}&empty=1" if query else "/?empty=1", status_code=303)
    return RedirectResponse(_with_filters(f"/tasks/{task.task_id}", request), status_code=303)


# The queue's filters it carries on are checked as the queue checks them: unchecked, a malformed one
# (``sku=%00``) came back as a 422 from the page the redirect led to.
@router.post("/tasks/{task_id}/claim", dependencies=[Depends(queue_filter)])
def claim_form(request: Request, task_id: TaskId, console: ConsoleDep, session: Reviewer) -> Response:
    try:
        console.tasks.claim(task_id, session.reviewer, console.console.console_lease_s)
    except TaskConflict as exc:
        return _refused("could not claim", exc, request, console, session)
    return RedirectResponse(_with_filters(f"/tasks/{task_id}", request), status_code=303)


@router.post("/tasks/{task_id}/release", dependencies=[Depends(queue_filter)])
def release_form(request: Request, task_id: TaskId, console: ConsoleDep, session: Reviewer) -> Response:
    try:
        console.tasks.release(task_id, session.reviewer)
    except TaskConflict as exc:
        return _refused("could not release", exc, request, console, session)
    return RedirectResponse(_with_filters("/", request), status_code=303)


def _refused(what: str, exc: TaskConflict, request: Request, console: Console, session: Session) -> Response:
    """Back to the queue (its filters kept) with why a form post was refused, tagged for this session:
    the API's 409, a bare JSON body, was what a person clicking the queue's claim button was shown."""
    query = _filters_query(request)
    reason = f"{what}: {exc}"
    note = urlencode({"refused": reason, "refused_tag": console.signer.note_tag(session, reason)})
    return RedirectResponse(f"/?{query}&{note}" if query else f"/?{note}", status_code=303)


@router.get("/tasks/{task_id}")
def item_page(request: Request, task_id: TaskId, console: ConsoleDep) -> Response:
    session = current_session(request)
    task = console.tasks.get(task_id)
    outbox = console.tasks.outbox(task_id)
    image = task.pending.matted.generated.image
    held = task.state == "claimed" and task.claimed_by == session.reviewer
    matted = task.pending.matted
    refs = {
        "generated": matted.generated.image,
        "predicted": matted.predicted_mask,
        "expected": matted.generated.expected_mask,
        "reference": matted.generated.reference_image,
    }
    if outbox is not None and outbox.payload.decision == "approve_edited" and outbox.payload.final_mask:
        # The mask that was saved, so the "edited" overlay of a decided item shows it, not the model's.
        refs["corrected"] = outbox.payload.final_mask
    images = {kind: _image_address(task.task_id, kind, ref) for kind, ref in refs.items()}
    page = {
        "taskId": task.task_id,
        "width": image.width,
        "height": image.height,
        "held": held,
        # A task the gate accepted takes a rejection unclaimed (a person's rejection stands against it).
        "rejectable": task.state == "accepted",
        "state": task.state,
        "leaseS": console.console.console_lease_s,
        "idleS": console.console.console_idle_s,
        "csrfToken": session.csrf_token,
        # Whose decision a 409 to a decision sent again finds recorded (item.js: answeredBefore).
        "reviewer": session.reviewer,
        "images": images,
        # Sent with a decision: one on pixels a replay replaced since is refused (reload).
        "shown": shown_pixels(task),
    }
    return templates.TemplateResponse(
        request,
        "item.html",
        {
            "session": session,
            "task": task,
            "held": held,
            "page": page,
            "checks": task.pending.checks,
            "reject_reasons": REJECT_REASONS,
            "final": outbox.payload if outbox else None,
            # The broker's reason a decision was set aside unsent: without it the page read as sent.
            "refused": outbox.refused_reason if outbox else None,
            "audit": console.tasks.audit(task_id),
            "now": console.tasks.clock(),
        },
    )


def _image_address(task_id: str, kind: str, ref: ImageRef) -> str:
    """Where the item page loads one of a task's images: the address names the bytes (``v``, their
    sha256 prefix), so an image a replay of the gate replaced (a new predicted mask) has a new address,
    and a browser's cached copy of the old one is not shown in its place."""
    return f"/tasks/{task_id}/images/{kind}?v={ref.sha256[:16]}"


@router.get("/tasks/{task_id}/images/{kind}")
def task_image(
    task_id: TaskId,
    kind: ImageKind,
    console: ConsoleDep,
    v: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    task = console.tasks.get(task_id)
    ref = _image_ref(console, task, kind)
    if ref is None:
        raise HTTPException(404, f"task {task_id} has no {kind} image")
    data = console.store.read_verified(ref)
    media_type = ref.media_type if ref.media_type in IMAGE_MEDIA_TYPES else "application/octet-stream"
    # Cached for good only under the address that names these bytes: the same address without it
    # served another image after a replay updated the task, and "immutable" kept the old one on screen.
    named = v == ref.sha256[:16]
    cache = "private, max-age=3600, immutable" if named else "private, no-cache"
    return Response(data, media_type=media_type, headers={"Cache-Control": cache})


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name])


def _image_ref(console: Console, task: Task, kind: str) -> ImageRef | None:
    matted = task.pending.matted
    if kind == "generated":
        return matted.generated.image
    if kind == "predicted":
        return matted.predicted_mask
    if kind == "expected":
        return matted.generated.expected_mask
    if kind == "reference":
        return matted.generated.reference_image
    outbox = console.tasks.outbox(task.task_id)
    if outbox is not None and outbox.payload.decision == "approve_edited":
        return outbox.payload.final_mask
    return None
