"""The console's web application: server-rendered pages, a small JSON API, images from the store.

Pages (HTML)                               API (JSON; JavaScript and scripts)
``GET  /login``, ``POST /login``           ``GET  /api/tasks``                    queue + counts
``POST /logout``                           ``GET  /api/tasks/{id}``               task + audit trail
``GET  /``              queue              ``POST /api/tasks/{id}/claim``         claim (or renew one's own)
``POST /claim-next``    claim oldest       ``POST /api/tasks/{id}/renew``         renew one's lease
``POST /tasks/{id}/claim``                 ``POST /api/tasks/{id}/release``       give it back
``POST /tasks/{id}/release``               ``POST /api/tasks/{id}/decision``      approve / edit / reject
``GET  /tasks/{id}``    item page          ``POST /api/claim-next``               claim oldest matching
``GET  /tasks/{id}/images/{kind}``         (generated, predicted, expected, reference, corrected)
``GET  /static/{file}``

Every route but the login form needs a session (pages redirect to /login, the rest answer 401);
every POST needs the session's CSRF token (see ``security.py``). Errors are JSON ``{"detail": ...}``
with 404 (no such task), 409 (lease or state conflict), 422 (invalid input, with the reason),
503 (task table or store unavailable; retry).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime and
# some (Reviewer, Filters) are local to create_app.
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.responses import Response as StarletteResponse

from schemas.common import ImageRef, check_safe_id
from schemas.events import Decision
from services.console.config import ConsoleSettings
from services.console.decisions import (
    REJECT_REASONS,
    DecisionInvalid,
    read_edited_mask,
    resolve,
    store_edited_mask,
)
from services.console.metrics import ConsoleMetrics
from services.console.relay import DecisionRelay
from services.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    SessionSigner,
    check_password,
    safe_next,
    same_origin,
    tokens_match,
)
from services.console.tasks import STATES, Task, TaskConflict, TaskFilter, TaskNotFound, TaskStore
from shared.config import Settings
from shared.errors import BadInput, TransientError
from shared.store import ObjectStore

HERE = Path(__file__).parent
STATIC_FILES = {"console.css": "text/css", "item.js": "text/javascript", "queue.js": "text/javascript"}
PUBLIC_PATHS = frozenset({"/login"})
ImageKind = Literal["generated", "predicted", "expected", "reference", "corrected"]
TaskId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="task id (32 hex)")]


@dataclass
class Console:
    """Everything the web application uses; built by ``server.py`` or by tests."""

    tasks: TaskStore
    store: ObjectStore
    settings: Settings
    console: ConsoleSettings
    metrics: ConsoleMetrics
    signer: SessionSigner
    relay: DecisionRelay | None = None


def make_signer(console: ConsoleSettings) -> SessionSigner:
    """The session signer: the configured secret, or a random one for this process."""
    secret = (
        console.console_session_secret.get_secret_value().encode()
        if console.console_session_secret
        else secrets.token_bytes(32)
    )
    return SessionSigner(secret, console.console_session_ttl_s)


def create_app(console: Console) -> FastAPI:
    """The FastAPI application serving ``console``."""
    app = FastAPI(title="skuforge correction console", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    users = console.console.users()
    cookie_flags: dict[str, Any] = {
        "httponly": True,
        "samesite": "strict",
        "secure": console.console.console_cookie_secure,
    }

    # -- authentication: one gate in front of every route -----------------------------------

    @app.middleware("http")
    async def require_login(
        request: Request, call_next: Callable[[Request], Awaitable[StarletteResponse]]
    ) -> StarletteResponse:
        if request.url.path in PUBLIC_PATHS:
            return await call_next(request)
        session = console.signer.verify(request.cookies.get(SESSION_COOKIE))
        if session is None:
            # Pages send people to the login form; images, scripts, favicons and the API get a 401.
            if (
                request.method == "GET"
                and "text/html" in request.headers.get("accept", "")
                and not request.url.path.startswith(("/api/", "/static/"))
                and ("/images/" not in request.url.path)
            ):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={safe_next(target)}", status_code=303)
            return JSONResponse({"detail": "login required"}, status_code=401)
        request.state.session = session
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[StarletteResponse]]
    ) -> StarletteResponse:
        response = await call_next(request)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'"
        )
        return response

    async def require_csrf(request: Request) -> Session:
        """The session, if the request carries its CSRF token and comes from our origin."""
        session: Session = request.state.session
        if not same_origin(request.headers.get("origin"), request.url.scheme, request.headers.get("host")):
            raise HTTPException(403, "cross-origin request refused")
        token = request.headers.get(CSRF_HEADER)
        if token is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            value = (await request.form()).get(CSRF_FIELD)
            token = value if isinstance(value, str) else None
        if not tokens_match(session.csrf_token, token):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return session

    Reviewer = Annotated[Session, Depends(require_csrf)]

    def current(request: Request) -> Session:
        session: Session = request.state.session
        return session

    # -- errors -------------------------------------------------------------------------------

    @app.exception_handler(TaskNotFound)
    async def _not_found(request: Request, exc: TaskNotFound) -> JSONResponse:
        return JSONResponse({"detail": f"no task {exc}"}, status_code=404)

    @app.exception_handler(TaskConflict)
    async def _conflict(request: Request, exc: TaskConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(DecisionInvalid)
    async def _invalid(request: Request, exc: DecisionInvalid) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(TransientError)
    async def _unavailable(request: Request, exc: TransientError) -> JSONResponse:
        return JSONResponse({"detail": f"temporarily unavailable: {exc}"}, status_code=503)

    @app.exception_handler(BadInput)
    async def _bad_object(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"detail": f"stored object unusable: {exc}"}, status_code=502)

    # -- login --------------------------------------------------------------------------------

    @app.get("/login")
    def login_page(request: Request, next: str = "/", error: str = "") -> Response:
        # Reuse the nonce of an open login form (another tab) so that tab's form stays valid.
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        if not 20 <= len(nonce) <= 64:
            nonce = secrets.token_urlsafe(24)
        response = templates.TemplateResponse(
            request,
            "login.html",
            {"nonce": nonce, "next": safe_next(next), "error": error[:100]},
        )
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **cookie_flags)
        return response

    @app.post("/login")
    def login(
        request: Request,
        reviewer: Annotated[str, Form(min_length=1, max_length=64)],
        password: Annotated[str, Form(min_length=1, max_length=256)],
        login_nonce: Annotated[str, Form(max_length=64)] = "",
        next: Annotated[str, Form(max_length=500)] = "/",
    ) -> Response:
        if not same_origin(request.headers.get("origin"), request.url.scheme, request.headers.get("host")):
            raise HTTPException(403, "cross-origin request refused")
        if not tokens_match(request.cookies.get(LOGIN_COOKIE), login_nonce):
            raise HTTPException(403, "missing or wrong login form token: reload the login page")
        if not check_password(users, reviewer, password):
            return RedirectResponse(f"/login?error=wrong+name+or+password&next={safe_next(next)}", 303)
        cookie, _ = console.signer.issue(reviewer)
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=console.signer.ttl_s, **cookie_flags)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    def logout(session: Reviewer) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- queue --------------------------------------------------------------------------------

    def queue_filter(
        sku: Annotated[str | None, Query(max_length=64)] = None,
        reason: Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,64}$")] = None,
        iou_min: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        iou_max: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        state: Annotated[Literal["pending", "claimed", "approved", "rejected", "all"], Query()] = "pending",
    ) -> TaskFilter:
        sku = sku.strip() if sku else None
        if sku:
            try:
                check_safe_id(sku)
            except ValueError as exc:
                raise HTTPException(422, f"sku: {exc}") from exc
        if iou_min is not None and iou_max is not None and iou_min > iou_max:
            raise HTTPException(422, "iou_min is larger than iou_max")
        return TaskFilter(
            sku_id=sku or None,
            reason=reason,
            iou_min=iou_min,
            iou_max=iou_max,
            state=None if state == "all" else state,
        )

    Filters = Annotated[TaskFilter, Depends(queue_filter)]

    @app.get("/")
    def queue_page(request: Request, filters: Filters) -> Response:
        session = current(request)
        return templates.TemplateResponse(
            request,
            "queue.html",
            {
                "session": session,
                "counts": console.tasks.counts(),
                "states": STATES,
                "tasks": console.tasks.query(filters),
                "filters": filters,
                "reasons": console.tasks.reasons(),
                "now": console.tasks.clock(),
                "query": request.url.query,
            },
        )

    @app.post("/claim-next")
    def claim_next_form(session: Reviewer, filters: Filters) -> Response:
        task = console.tasks.claim_next(session.reviewer, console.console.console_lease_s, filters)
        if task is None:
            return RedirectResponse("/?empty=1", status_code=303)
        return RedirectResponse(f"/tasks/{task.task_id}", status_code=303)

    @app.post("/tasks/{task_id}/claim")
    def claim_form(task_id: TaskId, session: Reviewer) -> Response:
        console.tasks.claim(task_id, session.reviewer, console.console.console_lease_s)
        return RedirectResponse(f"/tasks/{task_id}", status_code=303)

    @app.post("/tasks/{task_id}/release")
    def release_form(task_id: TaskId, session: Reviewer) -> Response:
        console.tasks.release(task_id, session.reviewer)
        return RedirectResponse("/", status_code=303)

    # -- item ---------------------------------------------------------------------------------

    @app.get("/tasks/{task_id}")
    def item_page(request: Request, task_id: TaskId) -> Response:
        session = current(request)
        task = console.tasks.get(task_id)
        outbox = console.tasks.outbox(task_id)
        image = task.pending.matted.generated.image
        held = task.state == "claimed" and task.claimed_by == session.reviewer
        page = {
            "taskId": task.task_id,
            "width": image.width,
            "height": image.height,
            "held": held,
            "state": task.state,
            "leaseS": console.console.console_lease_s,
            "csrfToken": session.csrf_token,
            "images": {
                kind: f"/tasks/{task.task_id}/images/{kind}"
                for kind in ("generated", "predicted", "expected", "reference")
            },
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
                "audit": console.tasks.audit(task_id),
                "now": console.tasks.clock(),
            },
        )

    @app.get("/tasks/{task_id}/images/{kind}")
    def task_image(task_id: TaskId, kind: ImageKind) -> Response:
        task = console.tasks.get(task_id)
        ref = _image_ref(console, task, kind)
        if ref is None:
            raise HTTPException(404, f"task {task_id} has no {kind} image")
        data = console.store.read_verified(ref)
        return Response(
            data, media_type=ref.media_type, headers={"Cache-Control": "private, max-age=3600, immutable"}
        )

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name])

    # -- API ----------------------------------------------------------------------------------

    @app.get("/api/tasks")
    def api_tasks(filters: Filters, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
        return {
            "counts": console.tasks.counts(),
            "tasks": [_task_json(task) for task in console.tasks.query(filters, limit=limit)],
        }

    @app.get("/api/tasks/{task_id}")
    def api_task(task_id: TaskId) -> dict[str, Any]:
        task = console.tasks.get(task_id)
        outbox = console.tasks.outbox(task_id)
        return {
            **_task_json(task),
            "audit": [entry.__dict__ for entry in console.tasks.audit(task_id)],
            "resolved": outbox.payload.model_dump(mode="json") if outbox else None,
            "published": bool(outbox and outbox.published_at),
        }

    @app.post("/api/tasks/{task_id}/claim")
    def api_claim(task_id: TaskId, session: Reviewer) -> dict[str, Any]:
        return _task_json(console.tasks.claim(task_id, session.reviewer, console.console.console_lease_s))

    @app.post("/api/tasks/{task_id}/renew")
    def api_renew(task_id: TaskId, session: Reviewer) -> dict[str, Any]:
        console.tasks.check_held(task_id, session.reviewer)
        return _task_json(console.tasks.claim(task_id, session.reviewer, console.console.console_lease_s))

    @app.post("/api/tasks/{task_id}/release")
    def api_release(task_id: TaskId, session: Reviewer) -> dict[str, Any]:
        return _task_json(console.tasks.release(task_id, session.reviewer))

    @app.post("/api/claim-next")
    def api_claim_next(session: Reviewer, filters: Filters) -> dict[str, Any]:
        task = console.tasks.claim_next(session.reviewer, console.console.console_lease_s, filters)
        return {"task": _task_json(task) if task else None}

    @app.post("/api/tasks/{task_id}/decision")
    def api_decision(
        task_id: TaskId,
        session: Reviewer,
        decision: Annotated[Decision, Form()],
        reject_reason: Annotated[str | None, Form(max_length=1000)] = None,
        mask: Annotated[UploadFile | None, File()] = None,
    ) -> dict[str, Any]:
        task = console.tasks.check_held(task_id, session.reviewer)
        if decision != "reject" and reject_reason:
            raise DecisionInvalid("only a rejection takes a reason")
        edited: ImageRef | None = None
        if decision == "approve_edited":
            if mask is None:
                raise DecisionInvalid("approve_edited needs the edited mask as the 'mask' file")
            data = mask.file.read(console.settings.max_image_bytes + 1)
            pixels = read_edited_mask(
                data,
                task,
                max_pixels=console.settings.max_image_pixels,
                max_bytes=console.settings.max_image_bytes,
            )
            edited = store_edited_mask(console.store, task, pixels)
        elif mask is not None:
            raise DecisionInvalid(f"{decision} takes no mask; use approve_edited to send one")
        event = console.tasks.decide(
            task_id,
            session.reviewer,
            decision,
            lambda held, at: resolve(
                held,
                decision=decision,
                reviewer=session.reviewer,
                decided_at=at,
                edited_mask=edited,
                reject_reason=reject_reason,
            ),
        )
        console.metrics.decisions.labels(decision).inc()
        if task.claimed_at is not None:
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

    return app


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


def _task_json(task: Task) -> dict[str, Any]:
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
    }
