"""How the console answers the platform's failures, the same from a route and from the login gate.

The gate (``auth.require_login``) is middleware: what it raises never reaches the application's
exception handlers, so it answers with these too, not with a bare 500.

A browser asking for a page (``Accept: text/html``, any path but ``/api/...``) gets a short HTML page
with the status, the reason and a link back to the queue: before, a link to a task gone from the table
or a queue address with a bad filter showed it the raw ``{"detail": ...}``. The API, and a script
that does not ask for HTML, get that JSON as before.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from shared.errors import BadInput, TransientError
from shared.observability import escape_control_characters

# Its styles inline (console.css's colours): a stylesheet link is fetched through the login gate, which
# answered it with its own 502/503 (or a 401 without a session), and the page showed unstyled.
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{status} {phrase} · skuforge console</title>
  <style>
    body {{ margin: 0; font: 14px/1.45 system-ui, sans-serif; background: #1d2025; color: #e8e8e8; }}
    main {{ padding: 1em; }}
    a {{ color: #93c5fd; }}
    .error {{ color: #fca5a5; }}
  </style>
</head>
<body>
  <main>
    <h1>{status} {phrase}</h1>
    <p class="error">{reason}</p>
    <p><a href="/">back to the queue</a></p>
  </main>
</body>
</html>
"""


def wants_page(request: Request) -> bool:
    """Whether the request is a browser's for a page, not a call of the API or a script's."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def answer(
    request: Request, status_code: int, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    """The error ``detail`` with ``status_code``: an HTML page to a browser asking for a page
    (``wants_page``), else JSON ``{"detail": detail}``."""
    if not wants_page(request):
        return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)
    if isinstance(detail, list):  # the fields refused, as the JSON lists them
        detail = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "Error"
    reason = html.escape(escape_control_characters(str(detail)))
    page = _PAGE.format(status=status_code, phrase=html.escape(phrase), reason=reason)
    return HTMLResponse(page, status_code=status_code, headers=headers)


def unavailable(request: Request, exc: TransientError) -> Response:
    """503: the task table or the store is unavailable (locked, full, unreachable); worth a retry."""
    return answer(request, 503, f"temporarily unavailable: {exc}")


def unusable(request: Request, exc: BadInput) -> Response:
    """502: a stored object (a task row, an image) cannot be used; retrying will not help."""
    return answer(request, 502, f"stored object unusable: {exc}")
