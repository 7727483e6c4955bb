"""The console's durable task table: SQLite in WAL mode, one row per flagged item.

Tables:

* ``tasks``   one row per ``correction.pending`` event, keyed by that event's id, so a redelivered
              event is ignored (``INSERT OR IGNORE``) instead of becoming a second task; a copy with
              other reasons (the gate replayed) updates an open task's, unless it was produced
              before the copy the task holds (at the same time: the payload sorting last is kept;
              ``add_pending``).
              States: ``pending`` → ``claimed`` (a reviewer holds a lease) → ``approved`` | ``rejected``.
              An expired lease sends the task back to ``pending``. A task whose reference photo its
              owner withdrew (``skuforge ingest --withdraw-missing``) is closed as ``withdrawn``
              (``withdraw_photos``), with no decision event: the trainstore has withdrawn the item.
              A waiting task whose render the gate, replayed, accepts is closed as ``accepted``
              (``close_accepted``), with no decision event either: the trainstore stores the item. A
              person may still reject it (``decide``): their rejection stands, in the trainstore too.
* ``audit``   every state change: task, reviewer, time, action, previous and new state, detail.
* ``gate_acceptances``  the newest ``gate.accepted`` of each render (SKU, item id, image sha256), so
              a flag of it produced no later, delivered after the acceptance (replayed from the
              dead-letter topic), makes no task to review: it is written ``accepted`` (``add_pending``).
              Rows go when the item's task is approved, rejected or withdrawn (``_forget_acceptances``);
              those of items never settled so stay (docs/console.md gives their size).
* ``task_counts``, ``task_reasons``  tasks by state and decision, and the reason codes the tasks give,
              kept by triggers on ``tasks`` (``_COUNT_TRIGGERS``), so the queue's state tabs and reason
              menu and each /metrics scrape read a few rows, not every task.
* ``outbox``  the ``correction.resolved`` event of each decision, written in the same transaction
              as the decision and published afterwards by ``services.console.relay`` (at least
              once, with a deterministic event id and ``produced_at``: ``OutboxEvent.produced_at``),
              so a decision is never lost between SQLite and Kafka.

Every method opens its own short connection, so the web server's threads, the intake thread
and the relay thread never share one. Time comes from ``clock`` (epoch seconds) so tests can
move it forward to expire leases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from schemas.common import BIDI_CONTROLS, NOT_ONE_LINE, READ_FROM_STORE, READ_FROM_TOPIC, ObjectRef
from schemas.envelope import Envelope, derive_id
from schemas.events import MAX_MESSAGE_CHARS, CorrectionPending, CorrectionResolved, Decision, GateAccepted
from shared.errors import BadInput, TransientError
from shared.observability import escape_control_characters, escape_control_characters_within

log = logging.getLogger("skuforge.console.tasks")

TaskState = Literal["pending", "claimed", "approved", "rejected", "withdrawn", "accepted"]
STATES: tuple[TaskState, ...] = ("pending", "claimed", "approved", "rejected", "withdrawn", "accepted")
# States no one acts on any more.
CLOSED: tuple[TaskState, ...] = ("approved", "rejected", "withdrawn", "accepted")
# Closed states no event changes any more (``accepted`` opens again on a newer flag).
SETTLED: tuple[TaskState, ...] = ("approved", "rejected", "withdrawn")
# Who closes a task whose photo was withdrawn, in the task and its audit entry.
WITHDRAWN_BY = "skuforge"
# Who closes a task whose item the gate accepted on a replay.
ACCEPTED_BY = "gate"
PRODUCER = "console"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id          TEXT PRIMARY KEY,
    sku_id           TEXT NOT NULL,
    item_id          TEXT NOT NULL,
    trace_id         TEXT NOT NULL,
    iou              REAL NOT NULL,
    reasons          TEXT NOT NULL,
    pending_json     TEXT NOT NULL,
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'claimed', 'approved', 'rejected', 'withdrawn', 'accepted')),
    received_at      REAL NOT NULL,
    claimed_by       TEXT,
    claimed_at       REAL,
    lease_expires_at REAL,
    decision         TEXT,
    decided_by       TEXT,
    decided_at       REAL,
    produced_at      REAL
);
-- The task table's indexes: _TASK_INDEXES, made (again, when defined otherwise) by _index_tasks.
CREATE TABLE IF NOT EXISTS audit (
    audit_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id        TEXT NOT NULL,
    reviewer       TEXT,
    action         TEXT NOT NULL,
    previous_state TEXT,
    new_state      TEXT NOT NULL,
    at             REAL NOT NULL,
    detail         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_by_task ON audit (task_id, audit_id);
CREATE TABLE IF NOT EXISTS outbox (
    event_id     TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL UNIQUE,
    sku_id       TEXT NOT NULL,
    trace_id     TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created_at   REAL NOT NULL,
    published_at REAL,
    refused_reason TEXT
);
CREATE TABLE IF NOT EXISTS gate_acceptances (
    sku_id       TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    accepted_at  REAL NOT NULL,
    event_id     TEXT NOT NULL,
    iou          REAL NOT NULL,
    PRIMARY KEY (sku_id, item_id, image_sha256)
);
CREATE TABLE IF NOT EXISTS revoked_sessions (
    csrf_token TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
"""
# The outbox rows the relay still sends, and those the broker refused for good. Published rows stay for
# ever, so these partial indexes keep a relay round, a /metrics scrape and a queue load to the few rows
# they want, not every decision ever made. The queries use these very conditions: SQLite takes a partial
# index only for a query whose WHERE holds each of the index's terms.
_UNSENT = "published_at IS NULL AND refused_reason IS NULL"
_REFUSED = "refused_reason IS NOT NULL"
# Made once ``refused_reason`` is (``_add_column``): in ``_SCHEMA``, an older outbox failed to open.
_OUTBOX_INDEXES = {
    "outbox_unsent": f"ON outbox (created_at, event_id) WHERE {_UNSENT}",
    "outbox_refused": f"ON outbox (created_at, event_id) WHERE {_REFUSED}",
}


# Kept by the triggers below on every write of ``tasks``, whoever writes (another process, an older
# version, the sqlite3 shell): the state tabs, each /metrics scrape and the reason menu read these few
# rows; before, each read every task (a GROUP BY, and json_each over every task's reasons).
# ``task_counts``: tasks by state and decision ('' for none). ``task_reasons``: how many of the tasks'
# reason lists hold each reason code (a row goes at zero). Made, and counted from the table, by
# ``_rebuild_counts``: not in ``_SCHEMA``, so a table made before them is counted before they count on.
_COUNT_TABLES = {
    "task_counts": "CREATE TABLE task_counts (state TEXT NOT NULL, decision TEXT NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (state, decision))",
    "task_reasons": "CREATE TABLE task_reasons (reason TEXT PRIMARY KEY, n INTEGER NOT NULL)",
}
# A task's reason codes, as ``json_each`` reads them (none if its column is not JSON, so no write fails).
_REASONS_OF = "json_each(CASE WHEN json_valid({row}.reasons) THEN {row}.reasons ELSE '[]' END)"
_COUNT_IN = """
    INSERT INTO task_counts (state, decision, n) VALUES (NEW.state, IFNULL(NEW.decision, ''), 1)
        ON CONFLICT (state, decision) DO UPDATE SET n = n + 1;"""
_COUNT_OUT = """
    UPDATE task_counts SET n = n - 1 WHERE state = OLD.state AND decision = IFNULL(OLD.decision, '');"""
_REASONS_IN = f"""
    INSERT INTO task_reasons (reason, n) SELECT value, 1 FROM {_REASONS_OF.format(row="NEW")} WHERE true
        ON CONFLICT (reason) DO UPDATE SET n = n + 1;"""
_OLD_REASONS = _REASONS_OF.format(row="OLD")
_REASONS_OUT = f"""
    UPDATE task_reasons SET n = n - (SELECT COUNT(*) FROM {_OLD_REASONS} WHERE value = reason)
        WHERE reason IN (SELECT value FROM {_OLD_REASONS});
    DELETE FROM task_reasons WHERE reason IN (SELECT value FROM {_OLD_REASONS}) AND n <= 0;"""
_COUNT_TRIGGERS = {
    "tasks_counted_in": f"AFTER INSERT ON tasks BEGIN{_COUNT_IN}{_REASONS_IN}\nEND",
    "tasks_counted_out": f"AFTER DELETE ON tasks BEGIN{_COUNT_OUT}{_REASONS_OUT}\nEND",
    "tasks_recounted": "AFTER UPDATE OF state, decision ON tasks"
    f" WHEN OLD.state IS NOT NEW.state OR OLD.decision IS NOT NEW.decision BEGIN{_COUNT_OUT}{_COUNT_IN}\nEND",
    "tasks_reasons_recounted": "AFTER UPDATE OF reasons ON tasks WHEN OLD.reasons IS NOT NEW.reasons"
    f" BEGIN{_REASONS_IN}{_REASONS_OUT}\nEND",
}
# What ``_keep_counts`` looks for, as SQLite stores it (``sqlite_master.sql``): both tables and every
# trigger, each as defined here.
_KEPT_SCHEMA = {
    **{("table", name): definition for name, definition in _COUNT_TABLES.items()},
    **{("trigger", name): f"CREATE TRIGGER {name} {body}" for name, body in _COUNT_TRIGGERS.items()},
}


class TaskConflict(Exception):
    """The task is not in a state that allows the action (someone else holds it, it is decided...)."""


class TaskNotFound(Exception):
    """No task has that id."""


class TaskUnsendable(TaskConflict):
    """No decision on the task can be sent: its event holds an object's URI the contract refuses since
    it was stored (``unsendable``), which a ``correction.resolved`` would embed. The task waits as it was."""


@dataclass(frozen=True)
class Task:
    """One row of the task table, with its pending event parsed."""

    task_id: str
    sku_id: str
    item_id: str
    trace_id: str
    iou: float
    reasons: list[str]
    pending: CorrectionPending
    state: TaskState
    received_at: float
    claimed_by: str | None
    claimed_at: float | None
    lease_expires_at: float | None
    decision: str | None
    decided_by: str | None
    decided_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Task:
        parsed = ("reasons", "pending")  # stored as JSON
        columns = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name not in parsed}
        return cls(
            **columns,
            reasons=json.loads(row["reasons"]),
            pending=CorrectionPending.model_validate_json(row["pending_json"], context=READ_FROM_STORE),
        )


@dataclass(frozen=True)
class TaskFilter:
    """Queue filters; None means no filter."""

    sku_id: str | None = None
    reason: str | None = None
    iou_min: float | None = None
    iou_max: float | None = None
    state: TaskState | None = "pending"


PENDING = TaskFilter()


@dataclass(frozen=True)
class AuditEntry:
    """One recorded state change."""

    task_id: str
    reviewer: str | None
    action: str
    previous_state: str | None
    new_state: str
    at: float
    detail: str


@dataclass(frozen=True)
class OutboxEvent:
    """A decision's ``correction.resolved`` event waiting to be (or already) published."""

    event_id: str
    task_id: str
    sku_id: str
    trace_id: str
    payload: CorrectionResolved
    created_at: float
    published_at: float | None
    refused_reason: str | None = None  # the broker refused it for good: set aside, never sent

    @property
    def produced_at(self) -> datetime:
        """The envelope's ``produced_at``: when the decision was recorded (its ``decided_at``), not when
        it is sent, so a resend is the same message and outranks nothing the item's events said since.
        Rows written by earlier versions have the same ``created_at``, so their sends agree too."""
        return datetime.fromtimestamp(self.created_at, UTC)


@dataclass(frozen=True)
class UnreadableDecision:
    """A stored decision that no longer reads (stored under a schema this version refuses): what is
    known of it without its payload, and why it does not read."""

    task_id: str
    sku_id: str
    refused_reason: str | None
    error: str
    event_id: str


def unsendable(task: Task) -> str | None:
    """Why no decision on ``task`` can be sent, or None: an object's URI in its event holds a character
    the contract refuses since review 48 (a control character, a line separator, a bidirectional control),
    read as stored (``READ_FROM_STORE``: escaped, it would name another object). A decision embeds the
    event in ``correction.resolved``: recorded, it no longer read and was set aside unsent, or every
    consumer dead-lettered it, and the task was closed to review. The field and the code point are named,
    the character never echoed."""
    for field, ref in _object_refs(task.pending, "pending"):
        found = NOT_ONE_LINE.search(ref.uri)
        if found is not None:
            return (
                f"task {task.task_id} was stored with U+{ord(found.group()):04X} (character "
                f"{found.start() + 1}) in {field}.uri, which the contract refuses in an object's URI since "
                "review 48: no decision on it can be sent, as every consumer would dead-letter it; the task "
                "waits as it is. Have the item matted and gated again (its objects stored under keys "
                "without that character), or leave it"
            )
    return None


def _object_refs(model: BaseModel, path: str) -> Iterator[tuple[str, ObjectRef]]:
    """Every object reference in ``model`` (at any depth), with the dotted path of its field."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, ObjectRef):
            yield f"{path}.{name}", value
        elif isinstance(value, BaseModel):
            yield from _object_refs(value, f"{path}.{name}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _object_refs(item, f"{path}.{name}[{index}]")


def decision_event_id(task_id: str) -> str:
    """The ``correction.resolved`` event id of a task: one decision per task, so one id."""
    return derive_id(task_id, PRODUCER, "decision")


class PhotoTask(NamedTuple):
    """A waiting task with its item and the reference photo it was made from."""

    task_id: str
    sku_id: str
    item_id: str
    photo_id: str


class Locked(NamedTuple):
    """A write transaction that holds the task table: its connection, and the clock read once it held it."""

    db: sqlite3.Connection
    now: float


# The task table's indexes, by name: the columns each orders by, ascending. ``_index_tasks`` makes each
# on every open that the table lacks, or holds under its name with other columns (an older version's:
# ``CREATE INDEX IF NOT EXISTS`` kept those, found by a string prefix in ``_SCHEMA``), and no other. A
# list's order ends with ``task_id``, which breaks ties of time: an index that ends before it had
# every page sort the list's rows of its state ("USE TEMP B-TREE FOR RIGHT PART OF ORDER BY").
_TASK_INDEXES: dict[str, tuple[str, ...]] = {
    # The waiting lists (pending, one's own claims) oldest first, paged by (received_at, task_id).
    "tasks_by_state": ("state", "received_at", "task_id"),
    "tasks_by_item": ("sku_id", "item_id"),
    # The closed lists, newest decision first.
    "tasks_by_decision": ("state", "decided_at", "task_id"),
    # The "all" list (no state filter), newest first by arrival: without it each page scanned and
    # sorted every task ever queued.
    "tasks_by_arrival": ("received_at", "task_id"),
    # A queue filtered by state and SKU, and its count: without it the count walked every row in the state.
    "tasks_by_state_sku": ("state", "sku_id", "received_at", "task_id"),
    # A closed list filtered by SKU (newest decision first): without it the list walked the whole state.
    "tasks_by_decision_sku": ("state", "sku_id", "decided_at", "task_id"),
    # The claims whose lease ran out, looked for before every read: without it every claim was read.
    "tasks_by_lease": ("state", "lease_expires_at"),
}


class TaskStore:
    """The task table at ``path`` (created with its parent directory on first use)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        # The schema version (``PRAGMA schema_version``) by which the kept counts were last found whole;
        # None while opening (``_keep_counts`` ends it). See ``_write``.
        self._counted_schema: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        # Columns added since a table was made (NULL in its old rows). ``produced_at`` (the time unknown)
        # is the last in ``_SCHEMA`` as well, so ``_allow_every_state``'s row-for-row copy still lines up;
        # ``refused_reason``: none was refused.
        self._add_column("tasks", "produced_at REAL", "each event's produced_at")
        self._add_column("outbox", "refused_reason TEXT", "why the broker refused a decision")
        self._allow_every_state()
        self._index_tasks()
        self._index_outbox()
        self._keep_counts()

    def _add_column(self, table: str, column: str, what: str) -> None:
        """Give ``table``, made before ``column`` (its name and type) was in ``_SCHEMA``, the column."""
        name = column.split()[0]
        with self._write() as (db, _):
            if name in {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}:
                return
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            log.info("task table %s now stores %s", self.path, what)

    def _index_tasks(self) -> None:
        """Give the task table each index of ``_TASK_INDEXES`` as defined there, by name and columns
        (``PRAGMA index_list``, ``index_xinfo``): made where missing, made again where its name holds
        other columns (a large table's take a while, logged). Indexes of other names are left alone."""
        with self._write() as (db, _):
            listed = {row["name"]: row for row in db.execute("PRAGMA index_list(tasks)")}
            holds_tasks = db.execute("SELECT 1 FROM tasks LIMIT 1").fetchone() is not None
            for name, columns in _TASK_INDEXES.items():
                made = listed.get(name)
                wanted = [(column, 0, "BINARY") for column in columns]
                if (
                    made is not None
                    and not made["unique"]
                    and not made["partial"]
                    and _index_keys(db, name) == wanted
                ):
                    continue
                db.execute(f"DROP INDEX IF EXISTS {name}")  # another definition (or table) under the name
                db.execute(f"CREATE INDEX {name} ON tasks ({', '.join(columns)})")
                if holds_tasks:
                    log.info(
                        "task table %s now indexes its tasks by %s (%s)", self.path, ", ".join(columns), name
                    )

    def _index_outbox(self) -> None:
        """Give an outbox made before ``_OUTBOX_INDEXES`` its indexes (once: a large one takes a while,
        logged; a new, empty one's are made silently: a command opening a new table printed the line)."""
        with self._write() as (db, _):
            made = {row["name"] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            holds_decisions = db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is not None
            for name, definition in _OUTBOX_INDEXES.items():
                if name not in made:
                    db.execute(f"CREATE INDEX {name} {definition}")
                    if holds_decisions:
                        log.info("task table %s now indexes its outbox (%s)", self.path, name)

    def _keep_counts(self) -> None:
        """Make the kept counts whole (``_rebuild_counts``), and note the schema version they were
        found whole by, so ``_write`` and the reads of the counts look again only once it changes."""
        with self._write() as (db, _):
            _rebuild_counts(db, self.path)
            self._counted_schema = _schema_version(db)

    def _counts_whole_since(self, db: sqlite3.Connection) -> int | None:
        """In the write transaction ``db``: once the schema changed since the kept counts were last found
        whole, make them whole again before anything is written; returns the schema version now (None
        while opening). Checked on open alone, a table whose triggers went while the console ran (an
        older version copying the table, the sqlite3 shell) was counted by nobody until a restart, and
        one whose count table went failed every write for good ("no such table: task_counts")."""
        if self._counted_schema is None:
            return None
        version = _schema_version(db)
        if version != self._counted_schema and _rebuild_counts(db, self.path):
            version = _schema_version(db)
        return version

    def _counts_current(self, db: sqlite3.Connection) -> None:
        """Before a read of the kept counts on ``db``: if the schema changed since they were last found
        whole, have a write transaction look at them (and make them whole) first. Otherwise (nearly
        always) nothing is written, so a /metrics scrape does not wait for the write lock."""
        if _schema_version(db) != self._counted_schema:
            with self._write():
                pass

    def _allow_every_state(self) -> None:
        """Let a table created before a state (``withdrawn``, ``accepted``) hold it: SQLite cannot change
        a CHECK constraint in place, so the table is copied into one with the new constraint, rows
        unchanged."""
        with self._write() as (db, _):
            row = db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tasks'"
            ).fetchone()
            missing = [state for state in STATES if f"'{state}'" not in row["sql"]]
            if not missing:
                return
            # Its indexes and triggers go with the dropped table, the owner's own too: made again as they
            # were (``_index_tasks`` then makes ours as defined today, ``_keep_counts`` checks the counts').
            kept = db.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'tasks' AND type IN ('index', 'trigger')"
                " AND sql IS NOT NULL"
            ).fetchall()
            start = _SCHEMA.index("CREATE TABLE IF NOT EXISTS tasks (")
            table = _SCHEMA[start : _SCHEMA.index("\n);", start) + 3]
            db.execute(table.replace("IF NOT EXISTS tasks", "tasks_with_every_state"))
            db.execute("INSERT INTO tasks_with_every_state SELECT * FROM tasks")
            db.execute("DROP TABLE tasks")
            db.execute("ALTER TABLE tasks_with_every_state RENAME TO tasks")
            for row in kept:
                db.execute(row["sql"])
            log.info("task table %s now allows the states %s", self.path, ", ".join(missing))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise TransientError(f"cannot open the task table {self.path}: {exc}") from exc
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        except sqlite3.OperationalError as exc:
            # Locked, full or vanished disk: the machine's fault, worth retrying.
            raise TransientError(f"task table {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            # "file is not a database": the path names some other file (or a damaged table).
            raise TransientError(
                f"{self.path} is not a task table ({exc}); check SKUFORGE_CONSOLE_DB_PATH"
            ) from exc
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[Locked]:
        """A write transaction that takes the lock up front (``BEGIN IMMEDIATE``), so check-then-update
        is atomic, with ``now``: the clock read once the lock is held, by which the writer judges leases
        and dates what it writes. With the clock read before, a lease that ran out while the writer
        waited for the table was judged unexpired (a decision let through, a claim refused that a retry
        a moment later took), and the writer's rows were dated before those written while it waited
        (``received_at`` orders the queue, ``decided_at`` the decided lists, ``at`` the audit)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                schema = self._counts_whole_since(db)
                yield Locked(db, self.clock())
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if schema is not None:  # noted once committed: a rebuild rolled back is looked for again
                self._counted_schema = schema

    @staticmethod
    def _audit(
        db: sqlite3.Connection,
        task_id: str,
        reviewer: str | None,
        action: str,
        previous: str | None,
        new: str,
        at: float,
        detail: str = "",
    ) -> None:
        db.execute(
            "INSERT INTO audit (task_id, reviewer, action, previous_state, new_state, at, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (task_id, reviewer, action, previous, new, at, detail),
        )

    # -- intake -------------------------------------------------------------------------------

    def add_pending(self, event: Envelope[CorrectionPending]) -> bool:
        """Queue the event's item; returns False when this event is already queued (redelivery).

        A copy with other content (the gate replayed after a threshold change: same event id, other
        reasons and figures) replaces the task's while it is open (pending or claimed, the claim
        kept), so a reviewer sees, and decides on, the gate's newest verdict; a decided task stays
        as it was decided. A copy produced before the one the task holds (an old copy replayed from
        the dead-letter topic after a newer one arrived) is ignored, so it cannot bring back reasons
        the gate no longer gives. Of two copies produced at the same time, the one whose payload
        JSON sorts last is kept, in whichever order they arrive. A task the gate accepted on a replay
        (``close_accepted``) is opened again, pending, by a copy produced after that acceptance (the
        gate replayed once more, with a tighter threshold): the gate's newest verdict wants a person.
        Likewise a copy of a render the gate accepted no earlier than this copy was produced (an old
        flag replayed after a newer acceptance that closed nothing: the item had no task, or its task
        showed another render) closes its task, or writes it closed, ``accepted``, as
        ``close_accepted`` would have closed it had they come in order: no reviewer is asked, and
        False is returned."""
        pending = event.payload
        generated = pending.matted.generated
        reasons, pending_json = json.dumps(pending.reasons), pending.model_dump_json()
        produced_at = event.produced_at.timestamp()
        with self._write() as (db, now):
            # The rule close_accepted applies to a waiting task: the acceptance wins unless the flag is newer.
            acceptance = db.execute(
                "SELECT accepted_at, event_id, iou FROM gate_acceptances"
                " WHERE sku_id = ? AND item_id = ? AND image_sha256 = ? AND accepted_at >= ?",
                (event.sku_id, generated.item_id, generated.image.sha256, produced_at),
            ).fetchone()
            cursor = db.execute(
                "INSERT OR IGNORE INTO tasks (task_id, sku_id, item_id, trace_id, iou, reasons,"
                " pending_json, state, received_at, produced_at, decided_by, decided_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.event_id,
                    event.sku_id,
                    generated.item_id,
                    event.trace_id,
                    pending.iou,
                    reasons,
                    pending_json,
                    "pending" if acceptance is None else "accepted",
                    now,
                    produced_at if acceptance is None else acceptance["accepted_at"],
                    None if acceptance is None else ACCEPTED_BY,
                    None if acceptance is None else now,
                ),
            )
            if cursor.rowcount == 0:
                row = db.execute(
                    "SELECT state, pending_json, produced_at FROM tasks WHERE task_id = ?", (event.event_id,)
                ).fetchone()
                # A row from before produced_at was stored (NULL) takes the copy, as it did then. Of
                # two copies produced at the same time, the one whose payload sorts last is kept: the
                # last to arrive won, and a redelivery after a restart switched the task between them.
                held_at = row["produced_at"]
                newer = (
                    held_at is None
                    or produced_at > held_at
                    or (produced_at == held_at and pending_json > row["pending_json"])
                )
                changed = row["pending_json"] != pending_json and newer
                detail = ",".join(pending.reasons)
                if row["state"] in ("pending", "claimed") and changed:
                    db.execute(
                        "UPDATE tasks SET iou = ?, reasons = ?, pending_json = ?, produced_at = ?"
                        " WHERE task_id = ?",
                        (pending.iou, reasons, pending_json, produced_at, event.event_id),
                    )
                    self._audit(
                        db, event.event_id, None, "intake_update", row["state"], row["state"], now, detail
                    )
                    if acceptance is not None:
                        # The copy shows a render (the item rendered again) that the gate accepted after
                        # flagging it; that acceptance came first and closed nothing, as the task showed
                        # other pixels then. In order, it would have closed the task: closed now.
                        waiting = db.execute(
                            "SELECT task_id, state, claimed_by FROM tasks WHERE task_id = ?",
                            (event.event_id,),
                        ).fetchone()
                        self._close_waiting(
                            db,
                            waiting,
                            "accepted",
                            ACCEPTED_BY,
                            "gate_accepted",
                            now,
                            _accepted_since(acceptance),
                            produced_at=acceptance["accepted_at"],
                        )
                elif (
                    row["state"] == "accepted"
                    and held_at is not None
                    and produced_at > held_at
                    and acceptance is None  # else the gate accepted this render since: that stands
                ):
                    # Flagged after the acceptance that closed it (which set produced_at): waiting again,
                    # since arriving now.
                    db.execute(
                        "UPDATE tasks SET state = 'pending', iou = ?, reasons = ?, pending_json = ?,"
                        " produced_at = ?, received_at = ?, claimed_by = NULL, claimed_at = NULL,"
                        " lease_expires_at = NULL, decided_by = NULL, decided_at = NULL WHERE task_id = ?",
                        (pending.iou, reasons, pending_json, produced_at, now, event.event_id),
                    )
                    self._audit(db, event.event_id, None, "intake_update", "accepted", "pending", now, detail)
                return False
            if acceptance is not None:
                detail = _accepted_since(acceptance)
                self._audit(db, event.event_id, ACCEPTED_BY, "gate_accepted", None, "accepted", now, detail)
                return False
            self._audit(db, event.event_id, None, "intake", None, "pending", now, ",".join(pending.reasons))
            return True

    # -- reading ------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        """The task, after returning expired leases; TaskNotFound if there is none."""
        self.expire_leases()
        with self._connect() as db:
            row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return _task_of(row)

    def query(self, filters: TaskFilter = PENDING, *, limit: int = 200) -> list[Task]:
        """Up to ``limit`` tasks matching ``filters``: oldest first while they wait for a decision
        (pending, claimed), newest first when decided ones are shown: by decision time for a decided
        state (approved, rejected, withdrawn), by arrival for all. Before, decided lists went by
        arrival too, so a decision just made on an item that had waited long was far down the list.

        A row that no longer reads as a task (stored under an older schema that a later one refuses)
        is left out and logged, not a failure of the whole queue, and the next rows are read in its
        place; it still counts in ``counts``, so the backlog alert sees it.
        """
        self.expire_leases()
        clauses, params = _where(filters)
        with self._connect() as db:
            return _read_past_unreadable(
                db,
                "tasks",
                clauses,
                params,
                keys=("decided_at" if filters.state in CLOSED else "received_at", "task_id"),
                newest_first=filters.state not in ("pending", "claimed"),
                limit=limit,
                read=Task.from_row,
                what="task",
            )

    def count(self, filters: TaskFilter = PENDING) -> int:
        """How many tasks match ``filters`` (readable or not), so a page can say its list was cut."""
        self.expire_leases()
        clauses, params = _where(filters)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            row = db.execute(f"SELECT COUNT(*) FROM tasks{where}", params).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """Number of tasks in each state (every state present, zero included).

        Read-only, so a /metrics scrape never waits for the write lock (WAL readers do not): a
        claim whose lease ran out counts as pending, as it will be once ``expire_leases`` runs.
        Read from the kept counts (``task_counts``) and the claims alone, in one statement (one
        snapshot), not from every task. (Once after the schema changed, the counts are looked at in a
        write transaction first: ``_counts_current``.)
        """
        with self._connect() as db:
            self._counts_current(db)
            rows = db.execute(
                "SELECT kept.state, kept.n + CASE kept.state WHEN 'pending' THEN expired.n"
                " WHEN 'claimed' THEN -expired.n ELSE 0 END AS n"
                " FROM (SELECT state, SUM(n) AS n FROM task_counts GROUP BY state) AS kept,"
                " (SELECT COUNT(*) AS n FROM tasks WHERE state = 'claimed' AND lease_expires_at <= ?)"
                " AS expired",
                (self.clock(),),
            ).fetchall()
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        counts.update({row["state"]: row["n"] for row in rows})
        return counts

    def decision_counts(self) -> dict[str, int]:
        """Decided tasks by decision, however and wherever they were decided (the web page, or
        ``skuforge console import-labelstudio`` in another process). Tasks are never deleted, so each
        count only grows: a counter read from the table. Read-only, as ``counts``, and from the kept
        counts (``task_counts``) as well."""
        with self._connect() as db:
            self._counts_current(db)
            rows = db.execute(
                "SELECT decision, SUM(n) AS n FROM task_counts"
                " WHERE state IN ('approved', 'rejected') AND decision != ''"
                " GROUP BY decision HAVING SUM(n) > 0"
            ).fetchall()
        return {row["decision"]: row["n"] for row in rows}

    def oldest_waiting_at(self) -> float | None:
        """When the oldest task still waiting for a decision (pending or claimed) arrived; None if none.

        Not one no decision on which can be sent (``unsendable``, counted by ``unsendable_waiting``): it
        waits for good, and the age of the oldest (``SkuforgeConsoleBacklogOld``) rose for ever."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM tasks WHERE state IN ('pending', 'claimed') ORDER BY received_at, task_id"
            )
            for row in rows:
                if _maybe_unsendable(row["pending_json"]) and _is_unsendable(row):
                    continue
                return float(row["received_at"])
        return None

    def unsendable_waiting(self) -> int:
        """How many tasks wait (pending or claimed) that no decision can be sent for (``unsendable``)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM tasks WHERE state IN ('pending', 'claimed') AND pending_json GLOB ?",
                (_MAYBE_UNSENDABLE_GLOB,),
            ).fetchall()
        return sum(1 for row in rows if _is_unsendable(row))

    def reasons(self) -> list[str]:
        """Every reason code some task gives, for the queue's filter (kept in ``task_reasons``)."""
        with self._connect() as db:
            self._counts_current(db)
            rows = db.execute("SELECT reason FROM task_reasons WHERE n > 0 ORDER BY reason").fetchall()
        return [row[0] for row in rows]

    def audit(self, task_id: str | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first (of one task, or of all)."""
        query = "SELECT * FROM audit"
        params: tuple[Any, ...] = ()
        if task_id is not None:
            query += " WHERE task_id = ?"
            params = (task_id,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY audit_id", params).fetchall()
        names = [field.name for field in dataclasses.fields(AuditEntry)]
        return [AuditEntry(**{name: row[name] for name in names}) for row in rows]

    # -- leases -------------------------------------------------------------------------------

    def expire_leases(self) -> int:
        """Return every task whose lease ran out to the queue; returns how many.

        A look without the table first spares it a write when no lease has run out; the sweep itself
        goes by the time it holds the table (``_write``).
        """
        with self._connect() as db:
            expired = db.execute(
                "SELECT 1 FROM tasks WHERE state = 'claimed' AND lease_expires_at <= ? LIMIT 1",
                (self.clock(),),
            ).fetchone()
        if expired is None:
            return 0
        with self._write() as (db, now):
            return self._return_expired(db, now)

    def _return_expired(self, db: sqlite3.Connection, now: float) -> int:
        """In the write transaction ``db``, return every task whose lease ran out by ``now``."""
        rows = db.execute(
            "SELECT task_id, claimed_by FROM tasks WHERE state = 'claimed' AND lease_expires_at <= ?",
            (now,),
        ).fetchall()
        for row in rows:
            db.execute(
                "UPDATE tasks SET state = 'pending', claimed_by = NULL, claimed_at = NULL,"
                " lease_expires_at = NULL WHERE task_id = ?",
                (row["task_id"],),
            )
            self._audit(db, row["task_id"], row["claimed_by"], "lease_expired", "claimed", "pending", now)
        return len(rows)

    def claim(self, task_id: str, reviewer: str, lease_s: float) -> Task:
        """Give ``reviewer`` the task for ``lease_s`` seconds; claiming one's own claim renews it.

        TaskConflict when another reviewer holds it or it is decided; leases that ran out by the time it
        holds the table (``_write``) are returned first.
        """
        with self._write() as (db, now):
            self._return_expired(db, now)
            row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            if row["state"] == "claimed" and row["claimed_by"] != reviewer:
                raise TaskConflict(f"task {task_id} is claimed by {row['claimed_by']}")
            if row["state"] in CLOSED:
                raise TaskConflict(_closed(task_id, row["state"]))
            _task_of(
                row
            )  # a task that no longer reads is not claimed: it would stay held until its lease ran out
            self._take(db, row, reviewer, lease_s, now)
        return self.get(task_id)

    def _take(
        self, db: sqlite3.Connection, row: sqlite3.Row, reviewer: str, lease_s: float, now: float
    ) -> None:
        """Give ``reviewer`` the pending task ``row``, or renew their claim on it, for ``lease_s`` seconds."""
        db.execute(
            "UPDATE tasks SET state = 'claimed', claimed_by = ?, claimed_at = COALESCE(?, ?),"
            " lease_expires_at = ? WHERE task_id = ?",
            (
                reviewer,
                row["claimed_at"] if row["state"] == "claimed" else None,
                now,
                now + lease_s,
                row["task_id"],
            ),
        )
        if row["state"] == "pending":
            self._audit(db, row["task_id"], reviewer, "claim", "pending", "claimed", now)

    def claim_next(self, reviewer: str, lease_s: float, filters: TaskFilter = PENDING) -> Task | None:
        """Claim the oldest pending task matching ``filters``; the reviewer's own claim matching them
        comes first (renewed), so "next" does not strand it. A claim of theirs that does not match stays
        theirs until its lease runs out: a reviewer filtering by SKU B was handed their SKU A item.

        The state filter holds too: ``claimed`` hands back only one's own claim, and a closed state
        (approved, rejected, withdrawn, accepted) nothing, as no such task can be claimed; before, the
        state was ignored and a reviewer looking through the accepted items was handed a pending one.
        ``pending`` and every state (None) take one's own claim, then a pending task.

        The task is found and claimed in one write transaction, so nobody takes it in between. One that
        no longer reads is passed over (logged), as the queue does, own claims included: before, one
        spoiled while held answered 502 to every claim-next until its lease ran out. So is one no
        decision on which can be sent (``unsendable``), which the queue still lists."""
        if filters.state in CLOSED:
            return None
        own_clauses, own_params = _where(dataclasses.replace(filters, state="claimed"))
        pending_clauses, pending_params = _where(dataclasses.replace(filters, state="pending"))
        sources = [([*own_clauses, "claimed_by = ?"], (*own_params, reviewer))]
        if filters.state != "claimed":
            sources.append((pending_clauses, pending_params))
        taken: str | None = None
        with self._write() as (db, now):
            self._return_expired(db, now)
            # An own claim is renewed: the reviewer is sent to its page, whose first renewal comes a
            # third of a lease later; with what was left of the old lease, the save could find it expired.
            for clauses, params in sources:
                # One that does not read is passed over: claimed, it would stay held until its lease ran out.
                oldest = _read_past_unreadable(
                    db,
                    "tasks",
                    clauses,
                    params,
                    keys=("received_at", "task_id"),
                    newest_first=False,
                    limit=1,
                    read=_row_to_hand_out,
                    what="task",
                )
                if oldest:
                    self._take(db, oldest[0], reviewer, lease_s, now)
                    taken = oldest[0]["task_id"]
                    break
        # Read after the transaction: ``get`` sweeps expired leases, which takes the write lock itself.
        return None if taken is None else self.get(taken)

    def release(self, task_id: str, reviewer: str) -> Task:
        """Give a claimed task back to the queue; only its holder may. One's own claim whose lease ran
        out is released all the same (before: "expired: claim it again", to give it back).

        One that no longer reads is BadInput and stays held until its lease runs out (claim-next passes
        it over): released first, the answer was a 502 for a release that was done, and a retry a 409."""
        with self._write() as (db, now):
            try:
                row = self._held(db, task_id, reviewer, now, lease_may_have_run_out=True)
            except TaskConflict:
                swept = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
                if swept["state"] == "pending" and self._expired_from(db, task_id) == reviewer:
                    # Its lease ran out and a sweep (any page view) gave it back already: released.
                    return _task_of(swept)
                raise
            _task_of(row)
            db.execute(
                "UPDATE tasks SET state = 'pending', claimed_by = NULL, claimed_at = NULL,"
                " lease_expires_at = NULL WHERE task_id = ?",
                (task_id,),
            )
            self._audit(db, task_id, reviewer, "release", row["state"], "pending", now)
        return self.get(task_id)

    @staticmethod
    def _expired_from(db: sqlite3.Connection, task_id: str) -> str | None:
        """The reviewer whose lease on the task ran out, when that is the task's last audit entry."""
        last = db.execute(
            "SELECT reviewer, action FROM audit WHERE task_id = ? ORDER BY audit_id DESC LIMIT 1",
            (task_id,),
        ).fetchone()
        return last["reviewer"] if last is not None and last["action"] == "lease_expired" else None

    def _held(
        self,
        db: sqlite3.Connection,
        task_id: str,
        reviewer: str,
        now: float,
        *,
        lease_may_have_run_out: bool = False,
        rejecting: bool = False,
    ) -> sqlite3.Row:
        """The task's row if ``reviewer`` holds it (with an unexpired lease, unless
        ``lease_may_have_run_out``: a release), else TaskNotFound or TaskConflict saying why.

        ``rejecting``: a task the gate accepted (``close_accepted``) is the row too, held or not: as in
        the trainstore, a person's rejection of a render stands against the gate's acceptance of it, so
        it is recorded (the reviewer holding it when the gate accepted it, or a Label Studio annotator).
        Nobody is handed such a task, so no lease guards it; the first decision closes it for good."""
        row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        if rejecting and row["state"] == "accepted":
            return row
        if row["state"] in CLOSED:
            raise TaskConflict(_closed(task_id, row["state"]))
        if row["state"] != "claimed" or row["claimed_by"] != reviewer:
            raise TaskConflict(f"task {task_id} is not claimed by {reviewer}: claim it first")
        if row["lease_expires_at"] <= now and not lease_may_have_run_out:
            raise TaskConflict(f"the lease on task {task_id} expired: claim it again")
        return row

    def check_held(self, task_id: str, reviewer: str, *, rejecting: bool = False) -> Task:
        """The task if ``reviewer`` holds an unexpired lease on it (or, ``rejecting``, the gate accepted
        it: ``_held``), else TaskConflict."""
        with self._connect() as db:
            return _task_of(self._held(db, task_id, reviewer, self.clock(), rejecting=rejecting))

    # -- withdrawn photos ---------------------------------------------------------------------

    def withdraw_photos(self, withdrawn: Mapping[str, set[str]]) -> list[str]:
        """Close every waiting task (pending or claimed) whose reference photo is withdrawn, by SKU id
        → photo ids, as ``withdrawn``; returns their ids. No decision event is written: the
        trainstore keeps such an item ``withdrawn`` whatever it receives. A reviewer holding one
        finds it closed when they save."""
        if not withdrawn:
            return []  # no write transaction
        closed: list[str] = []
        with self._write() as (db, now):
            for row, photo_id in _waiting_of_photos(db, withdrawn):
                detail = f"reference photo {photo_id} withdrawn by its owner"
                self._close_waiting(db, row, "withdrawn", WITHDRAWN_BY, "withdrawn", now, detail)
                _forget_acceptances(db, row["task_id"])
                closed.append(row["task_id"])
        return closed

    def waiting_of_photos(self, photos: Mapping[str, set[str]]) -> list[PhotoTask]:
        """The waiting tasks (pending or claimed) whose reference photo is one of ``photos``, by SKU id
        → photo ids (the withdrawal sweep's photos put back since they were withdrawn)."""
        with self._connect() as db:
            return [
                PhotoTask(row["task_id"], row["sku_id"], row["item_id"], photo_id)
                for row, photo_id in _waiting_of_photos(db, photos)
            ]

    def withdraw_put_back(self, tasks: list[PhotoTask]) -> list[str]:
        """Close ``tasks`` that still wait as ``withdrawn``, as ``withdraw_photos`` does: their items
        the trainstore withdrew with their reference photo, which its owner put back since. The
        images made before stay withdrawn (only the photo's new images are taken), so no decision on
        them would count. Returns the ids closed."""
        if not tasks:
            return []  # no write transaction
        closed: list[str] = []
        with self._write() as (db, now):
            for task in tasks:
                row = db.execute(
                    "SELECT task_id, state, claimed_by FROM tasks WHERE task_id = ?"
                    " AND state IN ('pending', 'claimed')",
                    (task.task_id,),
                ).fetchone()
                if row is None:
                    continue  # decided or closed meanwhile
                detail = (
                    f"reference photo {task.photo_id} withdrawn by its owner (put back since; the"
                    " trainstore keeps the images made before withdrawn)"
                )
                self._close_waiting(db, row, "withdrawn", WITHDRAWN_BY, "withdrawn", now, detail)
                _forget_acceptances(db, row["task_id"])
                closed.append(row["task_id"])
        return closed

    # -- the gate's acceptances ----------------------------------------------------------------

    def close_accepted(self, event: Envelope[GateAccepted]) -> list[str]:
        """Close every waiting task (pending or claimed) of the render the gate accepted in ``event``
        (the gate replayed after a threshold change) as ``accepted``; returns their ids.

        The trainstore stores the item, so no reviewer should spend time on it; no decision event is
        written. As in the trainstore, a task already decided stays decided (a person's decision stands
        against the gate's), and so does one of another render of the item (same item id, other pixels:
        its image's sha256 differs). Among the gate's verdicts the newest counts: an acceptance produced
        before the flag a task shows (the gate then flagged the item it had accepted) leaves the task
        open, and a flag produced after the acceptance opens it again (``add_pending``). A reviewer
        holding one finds it closed when they save.

        The acceptance is remembered (the newest of each render), so an older flag of the render
        delivered later makes no task to review (``add_pending``); not when the item's task is settled
        (approved, rejected, withdrawn), which no flag changes (``_forget_acceptances``)."""
        generated = event.payload.matted.generated
        accepted_at = event.produced_at.timestamp()
        closed: list[str] = []
        with self._write() as (db, now):
            settled = db.execute(
                "SELECT 1 FROM tasks WHERE task_id = ? AND sku_id = ? AND item_id = ? AND state IN"
                f" ({', '.join('?' * len(SETTLED))})",
                (event.event_id, event.sku_id, generated.item_id, *SETTLED),
            ).fetchone()
            # Not remembered once its task is decided for good: no flag of the item changes it (see
            # _forget_acceptances).
            if settled is None:
                db.execute(
                    "INSERT INTO gate_acceptances (sku_id, item_id, image_sha256, accepted_at, event_id, iou)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sku_id, item_id, image_sha256) DO UPDATE SET"
                    " accepted_at = excluded.accepted_at, event_id = excluded.event_id, iou = excluded.iou"
                    " WHERE excluded.accepted_at > gate_acceptances.accepted_at",
                    (
                        event.sku_id,
                        generated.item_id,
                        generated.image.sha256,
                        accepted_at,
                        event.event_id,
                        event.payload.iou,
                    ),
                )
            rows = db.execute(
                "SELECT task_id, state, claimed_by, pending_json, produced_at FROM tasks"
                " WHERE sku_id = ? AND item_id = ? AND state IN ('pending', 'claimed')",
                (event.sku_id, generated.item_id),
            ).fetchall()
            for row in rows:
                if row["produced_at"] is not None and row["produced_at"] > accepted_at:
                    continue  # flagged since: the gate's newer verdict
                try:
                    pending = CorrectionPending.model_validate_json(
                        row["pending_json"], context=READ_FROM_STORE
                    )
                except ValueError:
                    continue  # unreadable: the queue already leaves it out and logs it
                if pending.matted.generated.image.sha256 != generated.image.sha256:
                    continue  # another render of the item, which nobody has judged
                detail = f"the gate accepted it (IoU {event.payload.iou:.3f}) in event {event.event_id}"
                self._close_waiting(
                    db, row, "accepted", ACCEPTED_BY, "gate_accepted", now, detail, produced_at=accepted_at
                )
                closed.append(row["task_id"])
        return closed

    def _close_waiting(
        self,
        db: sqlite3.Connection,
        row: sqlite3.Row,
        state: TaskState,
        by: str,
        action: str,
        now: float,
        detail: str,
        *,
        produced_at: float | None = None,
    ) -> None:
        """Close the waiting task ``row`` (pending or claimed) as ``state``, decided by ``by``, with
        its audit entry; the detail names the reviewer who held it, if one did. ``produced_at``, when
        given, replaces the task's (the verdict that closed it); else the task keeps its own."""
        db.execute(
            "UPDATE tasks SET state = ?, decided_by = ?, decided_at = ?, lease_expires_at = NULL,"
            " produced_at = COALESCE(?, produced_at) WHERE task_id = ?",
            (state, by, now, produced_at, row["task_id"]),
        )
        if row["state"] == "claimed":
            detail += f" while {row['claimed_by']} held it"
        self._audit(db, row["task_id"], by, action, row["state"], state, now, detail)

    # -- decisions ----------------------------------------------------------------------------

    def decide(
        self,
        task_id: str,
        reviewer: str,
        decision: Decision,
        resolved: Callable[[Task, float], CorrectionResolved],
    ) -> OutboxEvent:
        """Record ``reviewer``'s decision, its audit entry and its outbox event in one transaction.

        ``resolved(task, decided_at)`` builds the event payload; it runs under the table's write lock
        after the hold is checked, so it must be quick (no object-store write: the caller writes an
        edited mask before). TaskConflict unless the reviewer holds an unexpired lease on the task, or
        rejects a task the gate accepted (a person's rejection stands against the gate's acceptance).
        """
        with self._write() as (db, now):
            row = self._held(db, task_id, reviewer, now, rejecting=decision == "reject")
            task = _task_of(row)
            if (why := unsendable(task)) is not None:
                raise TaskUnsendable(why)
            payload = resolved(task, now)
            new_state: TaskState = "rejected" if decision == "reject" else "approved"
            db.execute(
                "UPDATE tasks SET state = ?, decision = ?, decided_by = ?, decided_at = ?,"
                " lease_expires_at = NULL WHERE task_id = ?",
                (new_state, decision, reviewer, now, task_id),
            )
            detail = payload.reject_reason or (payload.final_mask.uri if payload.final_mask else "")
            self._audit(db, task_id, reviewer, decision, row["state"], new_state, now, detail)
            _forget_acceptances(db, task_id)
            event = OutboxEvent(
                event_id=decision_event_id(task_id),
                task_id=task_id,
                sku_id=task.sku_id,
                trace_id=task.trace_id,
                payload=payload,
                created_at=now,
                published_at=None,
            )
            db.execute(
                "INSERT INTO outbox (event_id, task_id, sku_id, trace_id, payload_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (event.event_id, task_id, task.sku_id, task.trace_id, payload.model_dump_json(), now),
            )
        return event

    def unsent(self, limit: int = 100) -> list[OutboxEvent | UnreadableDecision]:
        """The relay's next page: up to ``limit`` decisions whose event is not yet acknowledged by the
        broker, oldest first, less those set aside (``mark_refused``); one that no longer reads is an
        ``UnreadableDecision``, which the relay sets aside, so it is neither sent nor counted as waiting."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT * FROM outbox WHERE {_UNSENT} ORDER BY created_at, event_id LIMIT ?", (limit,)
            ).fetchall()
        return [_outbox_or_unreadable(row) for row in rows]

    def unpublished(self, limit: int = 100) -> list[OutboxEvent]:
        """Up to ``limit`` decisions whose event is not yet acknowledged by the broker, oldest first,
        less those set aside (``mark_refused``). One that no longer reads (see ``query``) is left out
        and logged, and the next ones are read in its place (the relay reads ``unsent``, and sets
        such a one aside)."""
        with self._connect() as db:
            return _read_past_unreadable(
                db,
                "outbox",
                [_UNSENT],
                (),
                keys=("created_at", "event_id"),
                newest_first=False,
                limit=limit,
                read=_outbox,
                what="decision",
            )

    def unpublished_count(self) -> int:
        """How many decisions wait for the broker's acknowledgement (the outbox backlog)."""
        with self._connect() as db:
            row = db.execute(f"SELECT COUNT(*) FROM outbox WHERE {_UNSENT}").fetchone()
        return int(row[0])

    def refused_count(self) -> int:
        """How many decisions were set aside, for an operator to look at: the broker refused them for
        good, or this version cannot read them."""
        with self._connect() as db:
            row = db.execute(f"SELECT COUNT(*) FROM outbox WHERE {_REFUSED}").fetchone()
        return int(row[0])

    def refused_reasons(self) -> dict[str, str]:
        """The broker's reason for each decision it refused for good, by task id (few: see ``refused``),
        so the queue and the task list mark them as the item page does."""
        with self._connect() as db:
            rows = db.execute(f"SELECT task_id, refused_reason FROM outbox WHERE {_REFUSED}")
            return {row["task_id"]: row["refused_reason"] for row in rows}

    def refused(self) -> list[OutboxEvent | UnreadableDecision]:
        """Every decision the broker refused for good, oldest first (``skuforge console refused``, ``resend
        --all``: each a failure someone looks at, so few). One that no longer reads is an
        ``UnreadableDecision``, so the list counts what ``refused_count`` (the /metrics gauge) counts
        and names each: left out, the operator had only a log line to find it by."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT * FROM outbox WHERE {_REFUSED} ORDER BY created_at, event_id"
            ).fetchall()
        return [_outbox_or_unreadable(row) for row in rows]

    def resend(self, task_id: str) -> str:
        """Give the refused decision of ``task_id`` back to the relay (once the topic takes it: its
        max.message.bytes raised), with an audit entry; returns the broker's reason it was refused for.
        Before, the only way was to clear ``refused_reason`` by hand in SQLite. TaskNotFound if there is
        no such task, TaskConflict if it has no decision, its decision was not refused or no longer reads."""
        with self._write() as (db, now):
            row = _task_and_decision(db, task_id)
            if row["event_id"] is None:
                raise TaskConflict(f"task {task_id} has no decision to send ({row['state']})")
            if row["refused_reason"] is None:
                sent = "was published" if row["published_at"] is not None else "waits to be sent"
                raise TaskConflict(f"the decision of task {task_id} was not refused: it {sent}")
            if isinstance(decision := _outbox_or_unreadable(row), UnreadableDecision):
                # Given back, it is not sent either: the relay sets it aside again.
                raise TaskConflict(decision.error)
            db.execute("UPDATE outbox SET refused_reason = NULL WHERE task_id = ?", (task_id,))
            detail = f"refused: {row['refused_reason']}"
            self._audit(db, task_id, None, "resend", row["state"], row["state"], now, detail)
        log.info("a refused decision goes back to the relay", extra={"task_id": task_id})
        return str(row["refused_reason"])

    def discard_unreadable(self, task_id: str) -> str:
        """Drop the unsent decision of ``task_id`` that no longer reads from the outbox, with an audit
        entry; returns why it did not read. The task stays as decided; its decision is never sent.

        Set aside by the relay, it stayed counted by ``refused_count`` (the /metrics gauge), so
        ``SkuforgeDecisionsRefused`` fired for ever unless someone deleted the row by hand in SQLite.
        TaskNotFound if there is no such task; TaskConflict if it has no decision, its decision was
        discarded already (named as such, with its audit entry) or published, or it reads (resend it,
        or leave it: it can still be sent)."""
        with self._write() as (db, now):
            row = _task_and_decision(db, task_id)
            if row["event_id"] is None:
                discarded = db.execute(
                    "SELECT audit_id, at FROM audit WHERE task_id = ? AND action = 'discard'"
                    " ORDER BY audit_id DESC LIMIT 1",
                    (task_id,),
                ).fetchone()
                if discarded is not None:  # a second run: its decision is gone, not never made
                    when = datetime.fromtimestamp(discarded["at"], UTC).isoformat(timespec="seconds")
                    raise TaskConflict(
                        f"the decision of task {task_id} was discarded already"
                        f" (audit entry {discarded['audit_id']}, {when}): nothing to discard"
                    )
                raise TaskConflict(f"task {task_id} has no decision to discard ({row['state']})")
            if row["published_at"] is not None:
                raise TaskConflict(f"the decision of task {task_id} was published: nothing to discard")
            decision = _outbox_or_unreadable(row)
            if not isinstance(decision, UnreadableDecision):
                what = "the broker refused it: resend it" if row["refused_reason"] else "it waits to be sent"
                raise TaskConflict(f"the decision of task {task_id} reads, so it is not discarded ({what})")
            db.execute("DELETE FROM outbox WHERE task_id = ?", (task_id,))
            self._audit(db, task_id, None, "discard", row["state"], row["state"], now, decision.error)
        log.warning("an unreadable decision is discarded, never sent", extra={"task_id": task_id})
        return decision.error

    def outbox(self, task_id: str) -> OutboxEvent | None:
        """The decision event of a task, if it was decided, to show; BadInput if it no longer reads (as
        ``get``). Read as stored (``READ_FROM_STORE``), as its task is: one recorded before review 48 on a
        task ``unsendable`` since answered 502 on the item page. Never for sending: the relay's reads
        (``unsent``) refuse it, and it is set aside unsent."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM outbox WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        if isinstance(decision := _outbox_or_unreadable(row, READ_FROM_STORE), UnreadableDecision):
            # Stored under a schema this version refuses: 502 with the reason.
            raise BadInput("decision_unreadable", decision.error)
        return decision

    def has_sku(self, sku_id: str) -> bool:
        """Whether any task, in any state, is of ``sku_id``."""
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM tasks WHERE sku_id = ? LIMIT 1", (sku_id,)).fetchone()
        return row is not None

    def revoke_session(self, csrf_token: str, expires_at: float) -> None:
        """A logged-out session (named by its CSRF token, unique per session): refused from now on,
        also by a restarted console; forgotten once it would have expired anyway."""
        with self._write() as (db, now):
            db.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT OR IGNORE INTO revoked_sessions (csrf_token, expires_at) VALUES (?, ?)",
                (csrf_token, expires_at),
            )

    def session_revoked(self, csrf_token: str) -> bool:
        """Whether that session was logged out."""
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM revoked_sessions WHERE csrf_token = ?", (csrf_token,)).fetchone()
        return row is not None

    def mark_refused(self, event_id: str, reason: str) -> None:
        """The broker refused the event for good (a record over the topic's max.message.bytes), or it no
        longer reads: it is set aside with ``reason``, so the relay goes on with the next instead of
        retrying it (or passing over it) forever."""
        with self._write() as (db, _):
            db.execute(
                "UPDATE outbox SET refused_reason = ? WHERE event_id = ? AND published_at IS NULL",
                (reason, event_id),
            )

    def mark_published(self, event_id: str) -> None:
        """The broker acknowledged the event (acks=all)."""
        with self._write() as (db, now):
            db.execute(
                "UPDATE outbox SET published_at = ? WHERE event_id = ? AND published_at IS NULL",
                (now, event_id),
            )


def _index_keys(db: sqlite3.Connection, name: str) -> list[tuple[str, int, str]]:
    """The columns the index ``name`` orders by: each one's name, 1 if descending, and collation."""
    rows = db.execute(f"PRAGMA index_xinfo({name})").fetchall()
    return [(row["name"], row["desc"], row["coll"]) for row in rows if row["key"]]


def _schema_version(db: sqlite3.Connection) -> int:
    """SQLite's count of the database's schema changes (by any connection, any process)."""
    return int(db.execute("PRAGMA schema_version").fetchone()[0])


def _rebuild_counts(db: sqlite3.Connection, path: Path) -> bool:
    """In the write transaction ``db``, make the kept counts (``_COUNT_TABLES``) and their triggers,
    counting the table as it is, unless both tables and every trigger are there as defined here
    (``_KEPT_SCHEMA``); returns whether they were made. In one transaction, so no write falls between
    the count and the first trigger. Made for a table made before them, one copied by
    ``_allow_every_state`` or an older version (a dropped table's triggers go with it), or one whose
    count tables were dropped by hand: before, only the triggers' names were looked for, so with the
    tables gone and the triggers left every write of a task failed, restarts included."""
    names = sorted({name for _, name in _KEPT_SCHEMA})
    made = db.execute(
        f"SELECT type, name, sql FROM sqlite_master WHERE name IN ({', '.join('?' * len(names))})", names
    )
    if {(row["type"], row["name"]): row["sql"] for row in made} == _KEPT_SCHEMA:
        return False
    for name in _COUNT_TRIGGERS:
        db.execute(f"DROP TRIGGER IF EXISTS {name}")
    for name in _COUNT_TABLES:
        db.execute(f"DROP TABLE IF EXISTS {name}")
    for table in _COUNT_TABLES.values():
        db.execute(table)
    # Every state has its row, so an expired claim always has a pending count to move to.
    zeros = [(state,) for state in STATES]
    db.executemany("INSERT INTO task_counts (state, decision, n) VALUES (?, '', 0)", zeros)
    db.execute(
        "INSERT INTO task_counts (state, decision, n) SELECT state, IFNULL(decision, ''), COUNT(*)"
        " FROM tasks WHERE true GROUP BY 1, 2"
        " ON CONFLICT (state, decision) DO UPDATE SET n = excluded.n"
    )
    db.execute(
        "INSERT INTO task_reasons (reason, n) SELECT value, COUNT(*)"
        f" FROM tasks, {_REASONS_OF.format(row='tasks')} GROUP BY value"
    )
    for name, definition in _COUNT_TRIGGERS.items():
        db.execute(f"CREATE TRIGGER {name} {definition}")
    if db.execute("SELECT 1 FROM tasks LIMIT 1").fetchone() is not None:
        log.info("task table %s now keeps its counts by state and its reason codes", path)
    return True


def _read_past_unreadable(
    db: sqlite3.Connection,
    table: str,
    clauses: list[str],
    params: tuple[Any, ...],
    *,
    keys: tuple[str, str],
    newest_first: bool,
    limit: int,
    read: Callable[[sqlite3.Row], Any],
    what: str,
) -> list[Any]:
    """Up to ``limit`` rows of ``table`` that read, in ``keys`` order (a unique pair).

    Reads page after page past the rows that no longer read: with one ``LIMIT`` query, as many
    unreadable rows as the limit at the head of the order hid every readable row behind them (the
    relay then published nothing, ever).
    """
    direction, after = ("DESC", "<") if newest_first else ("ASC", ">")
    order = f"{keys[0]} {direction}, {keys[1]} {direction}"
    items: list[Any] = []
    last: tuple[Any, Any] | None = None
    while len(items) < limit:
        page_clauses, page_params = list(clauses), list(params)
        if last is not None:
            page_clauses.append(f"({keys[0]}, {keys[1]}) {after} (?, ?)")
            page_params.extend(last)
        where = f" WHERE {' AND '.join(page_clauses)}" if page_clauses else ""
        wanted = limit - len(items)
        rows = db.execute(
            f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT ?", (*page_params, wanted)
        ).fetchall()
        items.extend(_readable(rows, read, what))
        if len(rows) < wanted:
            break  # the table is exhausted
        last = (rows[-1][keys[0]], rows[-1][keys[1]])
    return items


def _readable(rows: list[sqlite3.Row], read: Callable[[sqlite3.Row], Any], what: str) -> list[Any]:
    items = []
    for row in rows:
        try:
            item = read(row)
        except ValueError as exc:  # pydantic's ValidationError, or JSON that does not parse
            log.error(
                f"a stored {what} no longer reads; left out",
                extra={"task_id": row["task_id"], "error": str(exc)[:500]},
            )
        else:
            if item is not None:  # None: passed over (``_row_to_hand_out``)
                items.append(item)
    return items


def _outbox(row: sqlite3.Row, context: dict[str, Any] = READ_FROM_TOPIC) -> OutboxEvent:
    """The stored decision, read as the event it sends (``READ_FROM_TOPIC``), or as stored for display
    only (``READ_FROM_STORE``: one recorded before review 48 on a task ``unsendable`` since reads there)."""
    return OutboxEvent(
        event_id=row["event_id"],
        task_id=row["task_id"],
        sku_id=row["sku_id"],
        trace_id=row["trace_id"],
        payload=CorrectionResolved.model_validate_json(_reason_escaped(row["payload_json"]), context=context),
        created_at=row["created_at"],
        published_at=row["published_at"],
        refused_reason=row["refused_reason"],
    )


def _task_and_decision(db: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    """The task's state beside its outbox row (the outbox's columns NULL when it has no decision);
    TaskNotFound if there is no such task."""
    row = db.execute(
        "SELECT tasks.state, outbox.* FROM tasks LEFT JOIN outbox USING (task_id) WHERE task_id = ?",
        (task_id,),
    ).fetchone()
    if row is None:
        raise TaskNotFound(task_id)
    return row


def _reason_escaped(payload_json: str) -> str:
    """The stored decision with its reject reason's bidirectional controls escaped (``\\u202e``). A
    console before the contract refused them stored a reason as typed; read as stored, the reviewer's
    decision no longer read and was set aside unsent. Escaped, it is sent, reading as the item page
    shows it. (Control characters and line breaks were refused before ever being stored.) Cut to the
    contract's MAX_MESSAGE_CHARS between two escapes: one is six characters for one, and a reason of
    170 controls (within the console's 200 characters) escaped past it, and was set aside as before."""
    payload = json.loads(payload_json)
    reason = payload.get("reject_reason") if isinstance(payload, dict) else None
    if not isinstance(reason, str) or reason == escape_control_characters(reason):
        return payload_json
    escaped = escape_control_characters_within(reason, MAX_MESSAGE_CHARS)
    return json.dumps({**payload, "reject_reason": escaped})


def _outbox_or_unreadable(
    row: sqlite3.Row, context: dict[str, Any] = READ_FROM_TOPIC
) -> OutboxEvent | UnreadableDecision:
    try:
        return _outbox(row, context)
    except ValueError as exc:  # pydantic's ValidationError, or JSON that does not parse
        error = f"the decision of task {row['task_id']} no longer reads: {str(exc)[:300]}"
        return UnreadableDecision(
            row["task_id"], row["sku_id"], row["refused_reason"], error, event_id=row["event_id"]
        )


def _task_of(row: sqlite3.Row) -> Task:
    """The row as a task; one stored under a schema this version refuses is ``BadInput`` (a 502 that
    gives the reason), never a 500."""
    try:
        return Task.from_row(row)
    except ValueError as exc:
        raise BadInput(
            "task_unreadable", f"task {row['task_id']} no longer reads: {str(exc)[:300]}"
        ) from None


def _waiting_of_photos(
    db: sqlite3.Connection, photos: Mapping[str, set[str]]
) -> Iterator[tuple[sqlite3.Row, str]]:
    """The waiting tasks (pending or claimed) whose reference photo is one of ``photos`` (SKU id →
    photo ids), each with that photo id; a task whose event no longer reads is left out (the queue
    leaves it out already, and logs it)."""
    if not photos:
        return
    # The waiting tasks of those SKUs alone (tasks_by_state_sku), the SKUs bound as one JSON list:
    # one bound variable per SKU that ever had a withdrawal went past SQLite's limit (32766; 999
    # before 3.32), and then every sweep failed. Before, each sweep read every waiting task's id and
    # SKU to filter them here.
    waiting = db.execute(
        "SELECT task_id FROM tasks WHERE state IN ('pending', 'claimed')"
        " AND sku_id IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(photos)),),
    ).fetchall()
    for task_id in [row["task_id"] for row in waiting]:
        row = db.execute(
            "SELECT task_id, sku_id, item_id, state, claimed_by, pending_json FROM tasks WHERE task_id = ?",
            (task_id,),
        ).fetchone()
        try:
            pending = CorrectionPending.model_validate_json(row["pending_json"], context=READ_FROM_STORE)
        except ValueError:
            continue
        photo_id = pending.matted.generated.reference_photo_id
        if photo_id in photos[row["sku_id"]]:
            yield row, photo_id


def _forget_acceptances(db: sqlite3.Connection, task_id: str) -> None:
    """Drop the remembered acceptances (``gate_acceptances``) of the item of ``task_id``, settled now.

    The gate's flag and acceptance of one matted item share its event id (``derive_id``), the task's
    id: a flag of the item is a copy of this task, which ``add_pending`` leaves as it was settled, so
    the rows would never be read again. Rows of acceptances with another event id stay."""
    db.execute(
        "DELETE FROM gate_acceptances WHERE event_id = ?"
        " AND (sku_id, item_id) = (SELECT sku_id, item_id FROM tasks WHERE task_id = ?)",
        (task_id, task_id),
    )


# What a stored event's JSON holds wherever ``unsendable`` may find a character: the character itself
# (not escaped by the JSON writer) or a JSON escape. A cheap test in SQL and Python, so the events that
# cannot hold one (nearly all) are not parsed; ``_is_unsendable`` tells the others apart.
_MAYBE_UNSENDABLE_CHARACTERS = "\x7f-\x9f\u2028\u2029" + BIDI_CONTROLS + "\\\\"
_MAYBE_UNSENDABLE_GLOB = f"*[{_MAYBE_UNSENDABLE_CHARACTERS}]*"
_MAYBE_UNSENDABLE = re.compile(f"[{_MAYBE_UNSENDABLE_CHARACTERS}]")


def _maybe_unsendable(pending_json: str) -> bool:
    return _MAYBE_UNSENDABLE.search(pending_json) is not None


def _is_unsendable(row: sqlite3.Row) -> bool:
    """Whether the task of ``row`` reads and no decision on it can be sent (one that no longer reads is
    not: it is logged where it is read, and counted as waiting, as before)."""
    try:
        return unsendable(Task.from_row(row)) is not None
    except ValueError:
        return False


def _row_to_hand_out(row: sqlite3.Row) -> sqlite3.Row | None:
    """The row itself, once it reads as a task (else ValueError, as ``Task.from_row``); None for one no
    decision on which can be sent (``unsendable``): handed out, it was refused, released and handed out
    again by every "next", the oldest, for every reviewer. It stays in the queue."""
    return None if unsendable(Task.from_row(row)) is not None else row


def _accepted_since(acceptance: sqlite3.Row) -> str:
    """The audit detail of a task closed by an acceptance (``gate_acceptances``) newer than its flag."""
    return (
        f"the gate accepted it (IoU {acceptance['iou']:.3f}) in event {acceptance['event_id']}, produced"
        " no earlier than this flag"
    )


def _closed(task_id: str, state: str) -> str:
    """Why a closed task cannot be claimed or decided."""
    if state == "withdrawn":
        return f"task {task_id} is closed: its reference photo was withdrawn by its owner"
    if state == "accepted":
        return f"task {task_id} is closed: the gate accepted its item when replayed, and it is stored"
    return f"task {task_id} is already {state}"


def _where(filters: TaskFilter) -> tuple[list[str], tuple[Any, ...]]:
    clauses: list[str] = []
    params: list[Any] = []
    if filters.state is not None:
        clauses.append("state = ?")
        params.append(filters.state)
    if filters.sku_id:
        clauses.append("sku_id = ?")
        params.append(filters.sku_id)
    if filters.reason:
        # A row whose reasons are not JSON (damaged by hand) matches no reason: read by json_each as
        # they were, it failed the whole statement ("malformed JSON"), so every list and count by reason.
        clauses.append(f"EXISTS (SELECT 1 FROM {_REASONS_OF.format(row='tasks')} WHERE value = ?)")
        params.append(filters.reason)
    if filters.iou_min is not None:
        clauses.append("iou >= ?")
        params.append(filters.iou_min)
    if filters.iou_max is not None:
        clauses.append("iou <= ?")
        params.append(filters.iou_max)
    return clauses, tuple(params)
