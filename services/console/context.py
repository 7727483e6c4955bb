"""What every route of the console works with: the ``Console`` (task table, store, settings, metrics,
session signer, relay) and the request parameters pages and API share (task id, queue filters)."""

# No ``from __future__ import annotations``: FastAPI reads the dependencies' annotations at runtime.
import re
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.templating import Jinja2Templates

from schemas.common import check_safe_id
from schemas.events import CorrectionPending
from services.console.config import ConsoleSettings
from services.console.formtext import sent_twice
from services.console.metrics import ConsoleMetrics
from services.console.relay import DecisionRelay
from services.console.security import LoginThrottle, SessionSigner
from services.console.tasks import TaskFilter, TaskStore
from shared.config import Settings
from shared.gate.checks import figures
from shared.observability import escape_control_characters
from shared.store import ObjectStore

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def iou_figure(pending: CorrectionPending) -> str:
    """The item's IoU at 3 decimals, or at as many more as tell it from the threshold of its
    ``iou_below_threshold`` check: the queue and the item page showed a flagged 0.8996 as "0.900"
    beside that reason, as if it met a threshold of 0.9."""
    check = next((check for check in pending.checks if check.code == "iou_below_threshold"), None)
    return f"{pending.iou:.3f}" if check is None else figures(pending.iou, check.threshold)[0]


def plain_decimal(value: float) -> str:
    """``value`` as the shortest plain decimal that reads back as it, never in exponent form: the
    queue's filter inputs showed an IoU bound of 0.00001 as Python writes it, "1e-05", which the queue
    refuses (``_iou_bound`` takes a plain decimal only) when the form is sent again."""
    return format(Decimal(repr(value)), "f")


# A check's value and threshold, with the digits that tell them apart (a flagged 0.8996 read "0.900 / 0.900").
templates.env.globals["figures"] = figures
templates.env.globals["iou_figure"] = iou_figure
templates.env.filters["plain_decimal"] = plain_decimal
# Stored text from outside or from an earlier version (a reject reason, an audit entry's detail) may hold
# a bidirectional control, which reorders what the page shows after it: shown escaped (\u202e).
templates.env.filters["escaped"] = escape_control_characters
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
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)


def make_signer(console: ConsoleSettings) -> SessionSigner:
    """The session signer: the configured secret, or a random one for this process."""
    secret = (
        console.console_session_secret.get_secret_value().encode()
        if console.console_session_secret
        else secrets.token_bytes(32)
    )
    return SessionSigner(secret, console.console_session_ttl_s)


def console_of(request: Request) -> Console:
    """The ``Console`` the application was created with (``create_app`` keeps it in ``app.state``)."""
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(console_of)]


_REASON = re.compile(r"[a-z0-9_]{1,64}")
# The query's filters, each taken once: the framework reads a parameter given twice as its last copy.
FILTER_NAMES = ("sku", "reason", "iou_min", "iou_max", "state")


def queue_filter(
    request: Request,
    sku: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    iou_min: Annotated[str | None, Query(max_length=32)] = None,
    iou_max: Annotated[str | None, Query(max_length=32)] = None,
    state: Annotated[
        Literal["pending", "claimed", "approved", "rejected", "withdrawn", "accepted", "all"], Query()
    ] = "pending",
) -> TaskFilter:
    """The queue's filters from the query string; a malformed SKU, an empty IoU range or a filter
    given twice is a 422.

    An empty field means "no filter": the queue's filter form submits every field, blank or not. A
    filter given twice (``?sku=A&sku=B``) is refused as a form's field sent twice is (``formtext``):
    the framework took the last copy, and the queue listed SKU B's items alone without a word.
    """
    for name in FILTER_NAMES:
        if len(request.query_params.getlist(name)) > 1:
            raise HTTPException(422, sent_twice(name))
    sku = sku.strip() if sku else None
    if sku:
        try:
            check_safe_id(sku)
        except ValueError as exc:
            raise HTTPException(422, f"sku: {exc}") from exc
    reason = reason.strip() if reason else None
    if reason and not _REASON.fullmatch(reason):
        raise HTTPException(
            422,
            f"reason should be 1 to 64 of a-z, 0-9 and _ (e.g. iou_below_threshold); got {reason!r}",
        )
    low = _iou_bound("iou_min", iou_min)
    high = _iou_bound("iou_max", iou_max)
    if low is not None and high is not None and low > high:
        raise HTTPException(422, "iou_min is larger than iou_max")
    return TaskFilter(
        sku_id=sku or None,
        reason=reason or None,
        iou_min=low,
        iou_max=high,
        state=None if state == "all" else state,
    )


# ASCII digits only: \d also matches an Arabic-Indic one (U+0661), which float() reads as 1.0.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _iou_bound(name: str, text: str | None) -> float | None:
    """An IoU filter bound in [0, 1]; blank means none."""
    if text is None or not text.strip():
        return None
    try:
        # A plain decimal only: float() also reads "0_1" as 1.0 (digit grouping), "1e-1", "inf".
        if not _DECIMAL.fullmatch(text.strip()):
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise HTTPException(422, f"{name} should be a number from 0 to 1; got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise HTTPException(
            422, f"{name} should be greater than or equal to 0 and less than or equal to 1; got {text!r}"
        )
    return value


Filters = Annotated[TaskFilter, Depends(queue_filter)]
