"""The console's login, as HTTP: one gate in front of every route, the CSRF check, the login form.

The primitives (signed sessions, constant-time comparisons, safe redirects) are in ``security.py``.
Every route but the login form needs a session: pages, and forms a browser posts, redirect to
``/login`` (saying the session ran out when its cookie came without a live session); everything else
(the API, images, scripts) answers 401. Every POST needs the session's CSRF token (``Reviewer``).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime.
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response as StarletteResponse

from services.console import errors
from services.console.context import Console, ConsoleDep, templates
from services.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    MAX_NEXT_CHARS,
    MAX_PASSWORD_CHARS,
    SESSION_COOKIE,
    Session,
    check_password,
    safe_next,
    same_origin,
    tokens_match,
)
from shared.errors import BadInput, TransientError

PUBLIC_PATHS = frozenset({"/login"})
# How long a session's cookie is kept after the session ran out: a page opened meanwhile says it ran out.
SESSION_COOKIE_KEPT_S = 7 * 86400
CallNext = Callable[[Request], Awaitable[StarletteResponse]]

router = APIRouter()


def cookie_flags(console: Console) -> dict[str, Any]:
    """How the console's cookies are set: HttpOnly, SameSite=Strict, Secure when configured."""
    return {"httponly": True, "samesite": "strict", "secure": console.console.console_cookie_secure}


async def require_login(request: Request, call_next: CallNext) -> StarletteResponse:
    """Middleware: the request's session, or a redirect to the login form (pages) or a 401."""
    if request.url.path in PUBLIC_PATHS:
        return await call_next(request)
    console: Console = request.app.state.console
    try:
        # In a worker thread: the revoked-sessions lookup is SQLite (30 s busy timeout), and on the
        # event loop a locked table stalled every request of the console, /login and /metrics too.
        session = await run_in_threadpool(live_session, console, request.cookies.get(SESSION_COOKIE))
    except TransientError as exc:  # the revoked-sessions table is locked: retry, as from a route
        return errors.unavailable(request, exc)
    except BadInput as exc:
        return errors.unusable(request, exc)
    if session is None:
        return login_required(request, console)
    request.state.session = session
    response = await call_next(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def login_required(request: Request, console: Console) -> StarletteResponse:
    """The answer to a request without a live session. Pages and forms send people to the login form;
    images, scripts, favicons and the API (the item page's script reads its 401) get a 401."""
    path = request.url.path
    if "text/html" not in request.headers.get("accept", "") or path.startswith(("/api/", "/static/")):
        return JSONResponse({"detail": "login required"}, status_code=401)
    if request.method == "GET" and path == "/logout":
        # Logged out already: back to the login form, not to it with next=/logout (its confirmation).
        return RedirectResponse("/login", status_code=303)
    if request.method == "GET" and "/images/" not in path:
        target = path + (f"?{request.url.query}" if request.url.query else "")
        # Encoded, so the page's own query ("?sku=A&state=all") survives as one parameter.
        fields = {"next": safe_next(target)}
        if request.cookies.get(SESSION_COOKIE):
            # A cookie, but no live session in it: it ran out (or was ended elsewhere). Said on the login
            # form, or the reviewer could not tell it from never having logged in.
            fields = {"error": "ran_out", **fields}
        return RedirectResponse("/login?" + urlencode(fields), status_code=303)
    if request.method == "POST":
        # A form posted from a page whose session ran out meanwhile (claim, claim the next, log out): a
        # JSON 401 was what the person saw. What the form asked is not done; they log in again and are
        # back on the page they posted it from.
        if path == "/logout":
            return RedirectResponse("/login", status_code=303)
        query = urlencode({"error": "expired", "next": safe_next(page_posted_from(request, console))})
        return RedirectResponse(f"/login?{query}", status_code=303)
    return JSONResponse({"detail": "login required"}, status_code=401)


def page_posted_from(request: Request, console: Console) -> str:
    """The console page a form was posted from: its ``Referer`` if that is of the console's own origin
    (the console sends same-origin referrers), else the queue, also for a Referer that is no URL."""
    try:
        referer = urlsplit(request.headers.get("referer", ""))
    except ValueError:  # an unclosed IPv6 bracket ("http://["): a 500 before
        return "/"
    if not referer.scheme or not is_console_origin(f"{referer.scheme}://{referer.netloc}", request, console):
        return "/"
    return referer.path + (f"?{referer.query}" if referer.query else "")


def live_session(console: Console, cookie: str | None) -> Session | None:
    """The cookie's session if it is signed, unexpired, not logged out, and its reviewer still has
    the credential it was opened with (removed from SKUFORGE_CONSOLE_USERS or a changed password:
    logged out)."""
    session = console.signer.verify(cookie)
    if session is None:
        return None
    password = console.console.users().get(session.reviewer)
    if password is None or not tokens_match(
        console.signer.credential_tag(session.reviewer, password), session.credential
    ):
        return None
    if console.tasks.session_revoked(session.csrf_token):
        return None
    return session


# The login form is the one route served without a session: its body is capped before it is read,
# and only a plain form is taken (a multipart body would be spooled to disk whole first).
LOGIN_MAX_BYTES = 16 * 1024


# A decision's form beside its mask file: the decision, a reject reason, the multipart boundaries.
FORM_OVERHEAD_BYTES = 64 * 1024
# Any other POST (claim, release, renew, claim-next, logout, a decision without a file): a CSRF token
# and a few fields.
SMALL_FORM_MAX_BYTES = 16 * 1024
# A Content-Length: a number of bytes in ASCII digits (HTTP's 1*DIGIT).
_BYTE_COUNT = re.compile("[0-9]+")
# The one route that takes a file (a decision's mask).
DECISION_PATH = re.compile(r"/api/tasks/[^/]+/decision")


async def limit_bodies(request: Request, call_next: CallNext) -> StarletteResponse:
    """Middleware: POST /login takes a url-encoded form of at most LOGIN_MAX_BYTES, declared; any other
    multipart POST to the decision route (a decision with its mask) at most the image limit
    (``SKUFORGE_MAX_IMAGE_BYTES``) plus ``FORM_OVERHEAD_BYTES``, declared: the framework spools a
    multipart body to disk whole before the route sees it, so a limit checked there would come after
    the disk filled. Every other POST at most SMALL_FORM_MAX_BYTES. A body's length must be declared
    (no Transfer-Encoding): the HTTP parser then reads exactly that many bytes, so the declared length
    is the length read. A Content-Length that is not a number in ASCII digits is refused (400)."""
    if request.method != "POST":
        return await call_next(request)
    # Media types are case-insensitive: "Multipart/Form-Data" passed uncapped, and the form parser
    # took it as multipart.
    content_type = request.headers.get("content-type", "").lower()
    length = request.headers.get("content-length", "")
    declared = bool(length)
    if "transfer-encoding" in request.headers:
        # A chunked body's length is known only once it is read, and the HTTP parser ignores a
        # Content-Length beside it: a login form "of 10 bytes" delivered a gigabyte of fields.
        return JSONResponse({"detail": "a request body needs a Content-Length (no Transfer-Encoding)"}, 411)
    if declared and not _BYTE_COUNT.fullmatch(length):
        # ASCII digits only: str.isdigit took a superscript two (byte 0xB2, read as latin-1 like every
        # header) and int() raised, a 500. uvicorn's h11 refuses such a header itself; another server
        # in front of the app may not.
        return JSONResponse({"detail": f"the Content-Length {length!r} is not a number of bytes"}, 400)
    if request.url.path == "/login":
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return JSONResponse({"detail": "the login form is application/x-www-form-urlencoded"}, 415)
        if not declared:
            return JSONResponse({"detail": "the login form needs a Content-Length"}, 411)
        if int(length) > LOGIN_MAX_BYTES:
            return JSONResponse({"detail": f"the login form is at most {LOGIN_MAX_BYTES} bytes"}, 413)
    elif content_type.startswith("multipart/form-data") and DECISION_PATH.fullmatch(request.url.path):
        # Only the decision takes a file: a multipart claim or logout of megabytes was spooled too.
        console: Console = request.app.state.console
        most = console.settings.max_image_bytes + FORM_OVERHEAD_BYTES
        if not declared:
            return JSONResponse({"detail": "a form with a file needs a Content-Length"}, 411)
        if int(length) > most:
            return JSONResponse(
                {
                    "detail": f"the form is {length} bytes; at most {most} (a mask of at most "
                    f"{console.settings.max_image_bytes} bytes, SKUFORGE_MAX_IMAGE_BYTES)"
                },
                413,
            )
    elif declared and int(length) > SMALL_FORM_MAX_BYTES:
        # Without a Content-Length (and without Transfer-Encoding) a request has no body.
        return JSONResponse({"detail": f"the request body is at most {SMALL_FORM_MAX_BYTES} bytes"}, 413)
    return await call_next(request)


async def security_headers(request: Request, call_next: CallNext) -> StarletteResponse:
    """Middleware: no framing, no sniffing, same-origin referrers, a strict content policy."""
    response = await call_next(request)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'; form-action 'self'"
    )
    return response


def current_session(request: Request) -> Session:
    """The logged-in reviewer of a request that passed ``require_login``."""
    session: Session = request.state.session
    return session


def from_console_origin(request: Request, console: Console) -> bool:
    """Whether the request's ``Origin`` (if sent) is the console's own origin.

    Behind a TLS-terminating proxy the browser's origin is ``https://`` while the request reaches
    uvicorn as plain HTTP; ``SKUFORGE_CONSOLE_COOKIE_SECURE`` says the console is served over HTTPS.
    """
    return is_console_origin(request.headers.get("origin"), request, console)


def is_console_origin(origin: str | None, request: Request, console: Console) -> bool:
    """Whether ``origin`` (``scheme://host``; None: not sent) is the console's own origin, as
    ``from_console_origin`` reads a request's ``Origin``."""
    host = request.headers.get("host")
    if same_origin(origin, request.url.scheme, host):
        return True
    return console.console.console_cookie_secure and same_origin(origin, "https", host)


async def require_csrf(request: Request) -> Session:
    """The session, if the request carries its CSRF token and comes from our origin."""
    session = current_session(request)
    if not from_console_origin(request, request.app.state.console):
        raise HTTPException(403, "cross-origin request refused")
    token = request.headers.get(CSRF_HEADER)
    # Media types are case-insensitive, as ``limit_bodies`` reads them: a form sent as
    # "Application/X-WWW-Form-Urlencoded" was parsed, but its token never looked for (a 403).
    if token is None and request.headers.get("content-type", "").lower().startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    if not tokens_match(session.csrf_token, token):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return session


# A state-changing request's reviewer: logged in, with the session's CSRF token.
Reviewer = Annotated[Session, Depends(require_csrf)]


LOGIN_ERRORS = {
    "credentials": "wrong name or password",
    "throttled": "too many failed logins for this name: wait a minute, then try again",
    "expired": "your session ran out, and what you sent was not done: log in, then try it again",
    "ran_out": "your session ran out (or was ended elsewhere): log in again",
}


@router.get("/login")
def login_page(request: Request, console: ConsoleDep, next: str = "/", error: str = "") -> Response:
    # Reuse the nonce of an open login form (another tab) so that tab's form stays valid.
    nonce = request.cookies.get(LOGIN_COOKIE) or ""
    if not 20 <= len(nonce) <= 64:
        nonce = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        # Only messages of our own: a link's ?error= text would be shown on the console's origin.
        {
            "nonce": nonce,
            "next": safe_next(next),
            "error": LOGIN_ERRORS.get(error, ""),
            "max_password_chars": MAX_PASSWORD_CHARS,
        },
    )
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **cookie_flags(console))
    return response


@router.post("/login")
def login(
    request: Request,
    console: ConsoleDep,
    reviewer: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=MAX_PASSWORD_CHARS)],
    login_nonce: Annotated[str, Form(max_length=64)] = "",
    next: Annotated[str, Form(max_length=MAX_NEXT_CHARS)] = "/",
) -> Response:
    if not from_console_origin(request, console):
        raise HTTPException(403, "cross-origin request refused")
    if not tokens_match(request.cookies.get(LOGIN_COOKIE), login_nonce):
        raise HTTPException(403, "missing or wrong login form token: reload the login page")
    throttle = console.login_throttle
    # Refused before the password is even looked at; counted as a failure from here until it succeeds.
    if throttle.begin_attempt(reviewer) > 0:
        query = urlencode({"error": "throttled", "next": safe_next(next)})
        return RedirectResponse(f"/login?{query}", 303)
    users = console.console.users()
    if not check_password(users, reviewer, password):
        query = urlencode({"error": "credentials", "next": safe_next(next)})
        return RedirectResponse(f"/login?{query}", 303)
    throttle.succeeded(reviewer)
    cookie, _ = console.signer.issue(
        reviewer, credential=console.signer.credential_tag(reviewer, users[reviewer])
    )
    response = RedirectResponse(safe_next(next), status_code=303)
    # The cookie outlives its session (which ends on time: its end is signed into it), so that the
    # browser still sends it once the session ran out, and the login form can say so.
    max_age = console.signer.ttl_s + SESSION_COOKIE_KEPT_S
    response.set_cookie(SESSION_COOKIE, cookie, max_age=max_age, **cookie_flags(console))
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.get("/logout")
def logout_page(request: Request) -> Response:
    """A page whose form logs out (the POST): an address typed or bookmarked answered a JSON 405. A GET
    does not log out itself, or any page's link or image of /logout would end the session."""
    return templates.TemplateResponse(request, "logout.html", {"session": current_session(request)})


@router.post("/logout")
def logout(session: Reviewer, console: ConsoleDep) -> Response:
    # Ended on the server too: a copy of the cookie is refused from now on, not until it expires.
    console.tasks.revoke_session(session.csrf_token, session.expires_at)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
