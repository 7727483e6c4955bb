"""How the console answers the platform's failures, the same from a route and from the login gate.

The gate (``auth.require_login``) is middleware: what it raises never reaches the application's
exception handlers, so it answers with these too, not with a bare 500.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from shared.errors import BadInput, TransientError


def unavailable(exc: TransientError) -> JSONResponse:
    """503: the task table or the store is unavailable (locked, full, unreachable); worth a retry."""
    return JSONResponse({"detail": f"temporarily unavailable: {exc}"}, status_code=503)


def unusable(exc: BadInput) -> JSONResponse:
    """502: a stored object (a task row, an image) cannot be used; retrying will not help."""
    return JSONResponse({"detail": f"stored object unusable: {exc}"}, status_code=502)
