"""Intake: ``correction.pending`` → the console's task table; ``gate.accepted`` closes waiting tasks.

A stage on the shared runtime (``shared/runtime.py``) whose handlers write to SQLite and emit
nothing; the runtime commits the offset only after the write returned, so a crash redelivers and
the insert (keyed by the event id) ignores the copy; a copy with other reasons (the gate replayed)
updates a task still open, never a decided one, and an older copy delivered late changes nothing
(``TaskStore.add_pending``). A ``gate.accepted`` of a render a task waits on (the gate replayed after
a threshold change accepts what it flagged) closes that task as ``accepted``: the trainstore stores
the item (``TaskStore.close_accepted``); the acceptance is remembered until the item's task is
settled (approved, rejected, withdrawn), so an older flag of the render delivered after it makes no
task to review (``TaskStore.add_pending``). It runs as a thread
inside ``skuforge serve console`` (``SKUFORGE_CONSOLE_INTAKE=true``, the default), or alone with
``skuforge run console-intake`` beside a console started with the intake turned off: both share the
SQLite file.

Bad input: what the runtime refuses (not JSON, wrong schema) goes to the topic's dead-letter topic
(``correction.pending.v1.dlq``, ``gate.accepted.v1.dlq``), and so does an event produced more than
``SKUFORGE_CONSOLE_MAX_CLOCK_AHEAD_S`` ahead of the intake's clock (``clock_skew``): its time orders the
gate's verdicts of an item, so a flag dated year 9999 would outrank every later acceptance of it.
A locked or unwritable table is a ``TransientError``: the partition pauses and retries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from schemas.envelope import Envelope
from schemas.events import CorrectionPending, GateAccepted
from schemas.flow import CONSOLE_INTAKE
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED
from services.console.config import ConsoleSettings
from services.console.tasks import TaskStore
from shared.config import load_settings
from shared.observability import configure_logging
from shared.runtime import Context, Emit, Stage, refuse_clock_skew, run_stage, stage_command

log = logging.getLogger("skuforge.console.intake")

_CLOCK_SETTING = "SKUFORGE_CONSOLE_MAX_CLOCK_AHEAD_S"


def handle(event: Envelope[CorrectionPending], ctx: Context, *, tasks: TaskStore) -> list[Emit]:
    """Queue the flagged item for review (a redelivered event is already queued and is ignored, and one
    the gate has accepted since is recorded closed)."""
    added = tasks.add_pending(event)
    ctx.log.info(
        "task queued" if added else "task not queued: queued already, or the gate accepted the item since",
        extra={"task_id": event.event_id},
    )
    return []


def handle_accepted(event: Envelope[GateAccepted], ctx: Context, *, tasks: TaskStore) -> list[Emit]:
    """Close the waiting tasks of the render the gate accepted (most acceptances have none), and
    remember the acceptance for flags of the render delivered after it."""
    closed = tasks.close_accepted(event)
    if closed:
        ctx.log.info(
            "tasks closed: the gate accepted their item",
            extra={
                "sku_id": event.sku_id,
                "item_id": event.payload.matted.generated.item_id,
                "tasks": closed,
            },
        )
    return []


def build_intake_stage(tasks: TaskStore, *, max_clock_ahead_s: float = 300.0, **kwargs: Any) -> Stage:
    """The intake stage writing into ``tasks``, refusing events dated more than ``max_clock_ahead_s``
    ahead (``SKUFORGE_CONSOLE_MAX_CLOCK_AHEAD_S``); kwargs go to Stage: settings, store..."""
    kwargs.setdefault("default_metrics_port", CONSOLE_INTAKE.default_metrics_port)
    stage = Stage(CONSOLE_INTAKE.name, **kwargs)

    @stage.handler(CORRECTION_PENDING)
    def _handle(event: Envelope[Any], ctx: Context) -> list[Emit]:
        refuse_clock_skew(event, max_clock_ahead_s, _CLOCK_SETTING)
        return handle(event, ctx, tasks=tasks)

    @stage.handler(GATE_ACCEPTED)
    def _handle_accepted(event: Envelope[Any], ctx: Context) -> list[Emit]:
        refuse_clock_skew(event, max_clock_ahead_s, _CLOCK_SETTING)
        return handle_accepted(event, ctx, tasks=tasks)

    return stage


# What the line of a new, empty table advises the intake run on its own (``skuforge run console-intake``).
_INTAKE_OTHER_TABLE = (
    "if the console uses another, stop this and set SKUFORGE_CONSOLE_DB_PATH to the console's"
)


def open_task_table(path: str | Path, *, if_another: str = _INTAKE_OTHER_TABLE) -> TaskStore:
    """The task table at ``path``, made new and empty (and logged so, ending with ``if_another``: what to
    do if the tasks are in another table) where there is none.

    A first start makes the table; but one started on the default path beside a console using another
    (the local stack's, ``var/up/console/``) filled a table of its own without a word, and its console
    never showed those tasks."""
    made = not Path(path).exists()
    tasks = TaskStore(path)
    if made:
        log.info(
            "no task table at %s: made a new, empty task table there; %s",
            path,
            if_another,
            extra={"db": str(path)},
        )
    return tasks


def main(console: ConsoleSettings | None = None) -> int:
    """``skuforge run console-intake``: consume into the table at SKUFORGE_CONSOLE_DB_PATH until SIGTERM."""
    console = console or load_settings(ConsoleSettings)
    settings = load_settings()
    # Before the table is opened, so what opening it says (made new, given a column) is in the stage's format.
    configure_logging(settings.log_level, settings.log_format)
    tasks = open_task_table(console.console_db_path)
    return run_stage(
        build_intake_stage(tasks, max_clock_ahead_s=console.console_max_clock_ahead_s, settings=settings)
    )


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.console.intake", main))
