"""The console's web application: the login gate, the error mapping, and three routers.

Pages (HTML, ``pages.py``)                 API (JSON, ``api.py``; JavaScript and scripts)
``GET  /login``, ``POST /login``           ``GET  /api/tasks``                    queue + counts
``GET|POST /logout`` (``auth.py``)         ``GET  /api/tasks/{id}``               task + audit trail
``GET  /``              queue              ``POST /api/tasks/{id}/claim``         claim (or renew one's own)
``POST /claim-next``    claim oldest       ``POST /api/tasks/{id}/renew``         renew one's lease
``POST /tasks/{id}/claim``                 ``POST /api/tasks/{id}/release``       give it back
``POST /tasks/{id}/release``               ``POST /api/tasks/{id}/decision``      approve / edit / reject
``GET  /tasks/{id}``    item page          ``POST /api/claim-next``               claim oldest matching
``GET  /tasks/{id}/images/{kind}``         (generated, predicted, expected, reference, corrected)
``GET  /static/{file}``                    ``GET  /api/csrf``                     the session's CSRF token

Every route but the login form needs a session (pages redirect to /login, the rest answer 401);
every POST needs the session's CSRF token (``auth.py``, ``security.py``). Errors are JSON
``{"detail": ...}`` with 404 (no such task), 408 (a request body stopped arriving: ``slowbody.py``),
409 (lease or state conflict), 422 (invalid input, or a decision on a task no decision of which can be
sent: ``tasks.unsendable``; with the reason), 502 (a stored object is
unusable), 503 (task table or store unavailable; retry); a browser asking for a page (not /api/)
gets the same status and reason as a short HTML page linking back to the queue (``errors.py``); the
queue page's claim and release forms answer a conflict with a 303 to the queue showing the reason.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.console import api, auth, errors, pages
from services.console.context import Console
from services.console.decisions import DecisionInvalid
from services.console.formtext import FormTextInCharset
from services.console.slowbody import BodyIdleTimeout
from services.console.tasks import TaskConflict, TaskNotFound, TaskUnsendable
from shared.errors import BadInput, TransientError

# How long a request body may send nothing before it is answered 408 (``slowbody.py``).
BODY_IDLE_TIMEOUT_S = 30.0


def create_app(console: Console) -> FastAPI:
    """The FastAPI application serving ``console``."""
    app = FastAPI(title="skuforge correction console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    # A multipart form's text not in its charset: a 422 naming the field, not read as latin-1. Added
    # first, so it is the innermost: its 422, raised as the route reads the body, reached the route
    # through the "http" middlewares' task groups as an ExceptionGroup, which FastAPI answers 400.
    app.add_middleware(FormTextInCharset)
    # Inside the "http" middlewares too, for the same reason: a body that stops arriving is a 408.
    app.add_middleware(BodyIdleTimeout, idle_s=BODY_IDLE_TIMEOUT_S)
    # The one gate in front of every route; the headers wrap it, so a 401 or a redirect gets them too.
    app.middleware("http")(auth.require_login)
    app.middleware("http")(auth.limit_bodies)
    app.middleware("http")(auth.security_headers)
    app.include_router(auth.router)
    app.include_router(pages.router)
    app.include_router(api.router)

    @app.exception_handler(TaskNotFound)
    async def _not_found(request: Request, exc: TaskNotFound) -> Response:
        return errors.answer(request, 404, f"no task {exc}")

    @app.exception_handler(TaskConflict)
    async def _conflict(request: Request, exc: TaskConflict) -> Response:
        return errors.answer(request, 409, str(exc))

    @app.exception_handler(TaskUnsendable)
    async def _unsendable(request: Request, exc: TaskUnsendable) -> Response:
        # Not a 409: nothing another reviewer or a reload changes; the reason says what to do instead.
        return errors.answer(request, 422, str(exc))

    @app.exception_handler(DecisionInvalid)
    async def _invalid(request: Request, exc: DecisionInvalid) -> Response:
        return errors.answer(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own answer echoes each field's input: a form field that decodes to a lone surrogate
        # (a multipart body declared charset=utf-7) could not be encoded, and the client got a bare 500.
        return errors.answer(request, 422, [_field_error(error) for error in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's own answer (JSON, the exception's headers kept), unless a browser asked for a page.
        if not errors.wants_page(request) or exc.status_code in (204, 304):
            return await http_exception_handler(request, exc)
        return errors.answer(request, exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(TransientError)
    async def _unavailable(request: Request, exc: TransientError) -> Response:
        return errors.unavailable(request, exc)

    @app.exception_handler(BadInput)
    async def _bad_object(request: Request, exc: BadInput) -> Response:
        return errors.unusable(request, exc)

    return app


def _field_error(error: Any) -> dict[str, Any]:
    """Where and why a request field was refused, without the value sent (it may not be valid text)."""

    def text(value: object) -> str:
        return str(value).encode("utf-8", "backslashreplace").decode("utf-8")

    return {
        "loc": [part if isinstance(part, int) else text(part) for part in error.get("loc", ())],
        "msg": text(error.get("msg", "")),
        "type": text(error.get("type", "")),
    }
