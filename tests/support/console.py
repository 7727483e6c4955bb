"""Helpers for the console's tests: flagged items with real stored images, a logged-in client."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import Envelope, derive_id
from schemas.events import CorrectionPending, Decision, GateAccepted, GateCheck, ImageGenerated, ImageMatted
from schemas.topics import CORRECTION_PENDING, GATE_ACCEPTED
from services.console.app import create_app
from services.console.config import ConsoleSettings
from services.console.context import Console, make_signer
from services.console.decisions import record_decision
from services.console.labelstudio import import_annotations
from services.console.metrics import ConsoleMetrics
from services.console.tasks import _SCHEMA, STATES, Task, TaskStore
from shared import keys
from shared.arith.masks import mask_iou
from shared.bus import make_envelope
from shared.config import Settings, load_settings
from shared.store import FileStore, ObjectStore
from shared.synth import make_product, render_photo
from shared.trainstore.manifest import ManifestRow, ManifestStore

USERS = "alice:alice-password,bob:bob-password"
SIZE_PX = 128
# What Chromium sends as Accept when it navigates: a link, the address bar, a reload, a form it submits.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


class Clock:
    """A clock the test moves forward (leases expire without sleeping)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = start if start is not None else time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def table_is_busy(path: Path) -> bool:
    """Whether a write transaction holds the task table at ``path`` (another writer would wait)."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def flagged_item(
    store: ObjectStore, index: int, *, sku_id: str = "SKU-00001", seed: int = 11, size_px: int = SIZE_PX
) -> CorrectionPending:
    """A correction.pending payload whose images are rendered by shared.synth and stored in ``store``.

    The predicted mask misses the product's right half, so it differs from the expected mask.
    """
    spec = make_product(index % 15, seed)
    reference = render_photo(spec, 0, seed, size_px=size_px)
    generated = render_photo(spec, 1 + index, seed, size_px=size_px)
    expected = generated.mask
    predicted = expected.copy()
    columns = np.flatnonzero(expected.any(axis=0))
    predicted[:, (columns[0] + columns[-1]) // 2 :] = 0
    item_id = f"item-{index:04d}"

    def put(key: str, image: Image.Image | npt.NDArray[Any]) -> ImageRef:
        # Under the flow's keys, the sha256 in them as the stages write them: the items of one SKU
        # share its reference photo's key, and other pixels must not replace what an event names.
        return store.put_image(key, image, digest_in_key=True)

    matted = ImageMatted(
        generated=ImageGenerated(
            item_id=item_id,
            sku=SkuMetadata(sku_id=sku_id, name=f"Product {index}", category="soda can"),
            reference_photo_id="p1",
            reference_image=put(keys.photo_key(sku_id, "p1"), reference.image),
            reference_mask=put(keys.reference_mask_key(sku_id, "p1"), reference.mask),
            image=put(keys.generated_key(sku_id, item_id), generated.image),
            expected_mask=put(keys.expected_mask_key(sku_id, item_id), expected),
            backend="composite",
            model_id="composite-v1",
            seed=seed,
            variant_index=index,
        ),
        predicted_mask=put(keys.predicted_mask_key(sku_id, item_id), predicted),
        cutout=put(keys.cutout_key(sku_id, item_id), np.dstack([np.asarray(generated.image), predicted])),
        foreground_fraction=float((predicted > 0).mean()),
        mean_confidence=0.8,
        matting_model_id="u2netp-test",
    )
    value = mask_iou(predicted, expected)
    return CorrectionPending(
        matted=matted,
        iou=value,
        checks=[GateCheck(code="iou_below_threshold", passed=False, value=value, threshold=0.9)],
        reasons=["iou_below_threshold"] + (["product_drift"] if index % 2 else []),
    )


def pending_envelope(pending: CorrectionPending) -> Envelope[Any]:
    """The envelope the gate would publish (deterministic event id)."""
    item_id = pending.matted.generated.item_id
    event_id = derive_id("test-gate", item_id)
    return make_envelope(
        CORRECTION_PENDING,
        pending,
        event_id=event_id,
        sku_id=pending.matted.generated.sku.sku_id,
        trace_id=event_id,
        producer="gate",
    )


def accepted_envelope(
    pending: Envelope[Any], *, produced_at: datetime | None = None, matted: ImageMatted | None = None
) -> Envelope[Any]:
    """The gate's acceptance of ``pending``'s item under the same event id, as the gate publishes it
    when replayed after a threshold change (``matted``: another render or matting of the item)."""
    flagged: CorrectionPending = pending.payload
    passed = [check.model_copy(update={"passed": True, "threshold": 0.0}) for check in flagged.checks]
    return make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=matted or flagged.matted, iou=flagged.iou, checks=passed),
        event_id=pending.event_id,
        sku_id=pending.sku_id,
        trace_id=pending.trace_id,
        producer="gate",
        produced_at=produced_at,
    )


@dataclass
class ConsoleParts:
    """A console without Kafka (decisions stay in the outbox), over a real FileStore and SQLite file."""

    console: Console
    tasks: TaskStore
    store: FileStore
    clock: Clock


def build_console(
    tmp_path: Path, *, lease_s: float = 60.0, idle_s: float = 900.0, settings: Settings | None = None
) -> ConsoleParts:
    """Task table, store and app parts in ``tmp_path``."""
    clock = Clock()
    store = FileStore(tmp_path / "store")
    tasks = TaskStore(tmp_path / "console" / "tasks.sqlite3", clock=clock)
    console_settings = ConsoleSettings(
        console_users=USERS,
        console_lease_s=lease_s,
        console_idle_s=idle_s,
        console_db_path=str(tmp_path / "console" / "tasks.sqlite3"),
    )
    console = Console(
        tasks=tasks,
        store=store,
        settings=settings or load_settings(store_uri=f"file://{tmp_path / 'store'}"),
        console=console_settings,
        metrics=ConsoleMetrics(tasks),
        signer=make_signer(console_settings),
    )
    return ConsoleParts(console=console, tasks=tasks, store=store, clock=clock)


def with_flagged(parts: ConsoleParts, count: int) -> ConsoleParts:
    """``parts`` with ``count`` flagged items pending, added a second apart (oldest first)."""
    for index in range(count):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index)))
        parts.clock.advance(1.0)
    return parts


def flag_made_from(
    parts: ConsoleParts, index: int, photo_id: str = "p1", *, stored: bool = True
) -> CorrectionPending:
    """A task waiting in the console for SKU-A's item ``index`` made from ``photo_id``, and, when
    ``stored``, the trainstore's ``pending`` row of it (what it writes for correction.pending)."""
    pending = flagged_item(parts.store, index, sku_id="SKU-A")
    generated = pending.matted.generated.model_copy(update={"reference_photo_id": photo_id})
    matted = pending.matted.model_copy(update={"generated": generated})
    pending = pending.model_copy(update={"matted": matted})
    parts.tasks.add_pending(pending_envelope(pending))
    if stored:
        row = ManifestRow(
            item_id=generated.item_id,
            sku_id="SKU-A",
            category="soda can",
            source="synthetic",
            status="pending",
            reference_photo_id=photo_id,
        )
        ManifestStore(parts.store, "trainstore").append("SKU-A", [row])
    parts.clock.advance(1.0)
    return pending


def record_listings(parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prefixes ``parts.store`` is listed under from now on, in order (its listing otherwise kept)."""
    listed: list[str] = []
    list_keys = parts.store.list_keys

    def listing(prefix: str = "") -> Iterator[str]:
        listed.append(prefix)
        return list_keys(prefix)

    monkeypatch.setattr(parts.store, "list_keys", listing)
    return listed


def flagged_parts_fixture(count: int) -> Any:
    """A ``parts`` fixture for a test module (``parts = flagged_parts_fixture(2)``): a console in the
    test's ``tmp_path`` with ``count`` flagged items pending."""

    @pytest.fixture
    def parts(tmp_path: Path) -> ConsoleParts:
        return with_flagged(build_console(tmp_path), count)

    return parts


def console_defaults_fixture() -> Any:
    """A ``defaults`` fixture for a test module (``defaults = console_defaults_fixture()``): the test's
    ``tmp_path`` as the current folder, with the task table and the store at their defaults (neither
    SKUFORGE_CONSOLE_DB_PATH nor SKUFORGE_STORE_URI set), so the repository's ``var/`` is never written."""

    @pytest.fixture
    def defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("SKUFORGE_CONSOLE_DB_PATH", raising=False)
        monkeypatch.delenv("SKUFORGE_STORE_URI", raising=False)
        return tmp_path

    return defaults


def task_table_before(
    state: str, path: Path, current: TaskStore, *, oldest: int | None = None, then: str = ""
) -> TaskStore:
    """A task table at ``path`` as it was before ``state`` existed (its CHECK refuses it), holding
    ``current``'s rows (the ``oldest`` of them, if given), with the statements ``then`` run on it,
    opened as today's TaskStore: the migration under test."""
    before = _SCHEMA.replace(f", '{state}'", "")
    assert before != _SCHEMA
    db = sqlite3.connect(path)
    db.executescript(before)
    db.execute("ATTACH DATABASE ? AS current", (str(current.path),))
    rows = "SELECT * FROM current.tasks" + (" ORDER BY received_at LIMIT ?" if oldest is not None else "")
    db.execute(f"INSERT INTO tasks {rows}", () if oldest is None else (oldest,))
    db.commit()
    db.executescript(then)
    with pytest.raises(sqlite3.IntegrityError):  # what the old table refused
        db.execute("UPDATE tasks SET state = ?", (state,))
    db.close()
    return TaskStore(path)


def use_cli_on(parts: ConsoleParts, monkeypatch: Any) -> None:
    """Point ``skuforge console ...`` (in this process) at ``parts``' store and task table."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", parts.store.base_uri)
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(parts.tasks.path))


def decided(parts: ConsoleParts, count: int, *, first: int = 0) -> list[str]:
    """``count`` items (indexes from ``first``) approved by alice: their decisions wait in the outbox;
    returns the task ids."""
    task_ids = []
    for index in range(first, first + count):
        envelope = pending_envelope(flagged_item(parts.store, index))
        parts.tasks.add_pending(envelope)
        decide_as_alice(parts, envelope.event_id)
        task_ids.append(envelope.event_id)
    return task_ids


def decide_as_alice(
    parts: ConsoleParts,
    task_id: str,
    decision: Decision = "approve_expected",
    reject_reason: str | None = None,
) -> None:
    """alice claims the pending task and records ``decision`` (no mask file) on it."""
    parts.tasks.claim(task_id, "alice", 60.0)
    record_as(parts, "alice", task_id, decision, reject_reason)


def record_as(
    parts: ConsoleParts,
    reviewer: str,
    task_id: str,
    decision: Decision = "approve_expected",
    reject_reason: str | None = None,
) -> None:
    """``reviewer``'s ``decision`` (no mask file) on the task they hold, recorded."""
    record_decision(
        parts.tasks,
        parts.store,
        task_id=task_id,
        reviewer=reviewer,
        decision=decision,
        reject_reason=reject_reason,
        mask_bytes=None,
        max_pixels=10_000_000,
        max_bytes=10_000_000,
    )


def login(client: Any, reviewer: str = "alice", password: str | None = None) -> str:
    """Log ``client`` (a starlette TestClient) in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce, page.text
    response = client.post(
        "/login",
        data={
            "reviewer": reviewer,
            "password": password or f"{reviewer}-password",
            "login_nonce": nonce.group(1),
            "next": "/",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/", response.text
    queue = client.get("/")
    token = re.search(r'name="csrf-token" content="([^"]+)"', queue.text)
    assert token, queue.text
    return token.group(1)


def ran_out_session(parts: ConsoleParts) -> str:
    """A session cookie of alice's that ran out a second ago."""
    signer = parts.console.signer
    cookie, _ = signer.issue(
        "alice",
        now=time.time() - signer.ttl_s - 1.0,
        credential=signer.credential_tag("alice", "alice-password"),
    )
    return cookie


def app_for(parts: ConsoleParts) -> Any:
    """The FastAPI app of ``parts``."""
    return create_app(parts.console)


def decided_at(payload: dict[str, Any]) -> datetime:
    """The decision time of a resolved payload as an aware datetime."""
    return datetime.fromisoformat(payload["decided_at"]).astimezone(UTC)


def claim(client: Any, token: str, task_id: str) -> None:
    """The logged-in ``client`` (a starlette TestClient, ``token`` its CSRF token) claims ``task_id``."""
    assert client.post(f"/api/tasks/{task_id}/claim", headers={"X-CSRF-Token": token}).status_code == 200


def decide(client: Any, token: str, task_id: str, **form: Any) -> Any:
    """The response to the logged-in ``client``'s decision ``form`` on ``task_id`` (``mask``: the PNG's
    bytes, sent as the mask file)."""
    mask = form.pop("mask", None)
    files = {"mask": ("mask.png", mask, "image/png")} if mask is not None else None
    return client.post(
        f"/api/tasks/{task_id}/decision", data=form, files=files, headers={"X-CSRF-Token": token}
    )


def outbox_from_before_refusals(path: Path) -> None:
    """Make the task table at ``path`` as a console from before refusals wrote it: no ``refused_reason``
    column in its outbox, nor the indexes on it (SQLite drops no column an index reads)."""
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX outbox_unsent")
        db.execute("DROP INDEX outbox_refused")
        db.execute("ALTER TABLE outbox DROP COLUMN refused_reason")


def one_task(tmp_path: Path, *, claimed: bool = True) -> tuple[ConsoleParts, Task, Any, str]:
    """A console with one flagged task, a test client logged in as alice and her CSRF token, the task
    claimed by her unless not ``claimed``."""
    from starlette.testclient import TestClient

    parts = with_flagged(build_console(tmp_path), 1)
    [task] = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    if claimed:
        claim(client, token, task.task_id)
    return parts, task, client, token


def spoil(parts: ConsoleParts, table: str, task_id: str) -> None:
    """Make one stored row unreadable, as a row stored under a schema a later version refuses is."""
    column, path = ("pending_json", ()) if table == "tasks" else ("payload_json", ("pending",))
    db = sqlite3.connect(parts.tasks.path)
    stored = json.loads(
        db.execute(f"SELECT {column} FROM {table} WHERE task_id = ?", (task_id,)).fetchone()[0]
    )
    target = stored
    for key in path:
        target = target[key]
    target["iou"] = "not a number"
    db.execute(f"UPDATE {table} SET {column} = ? WHERE task_id = ?", (json.dumps(stored), task_id))
    db.commit()
    db.close()


def traced_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement run on a connection opened from now on, as SQLite expands it (values in place)."""
    statements: list[str] = []
    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    return statements


def full_counts(path: Path, now: float) -> dict[str, int]:
    """Tasks by state, an expired claim as pending, read from every row (what ``counts`` read before)."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT CASE WHEN state = 'claimed' AND lease_expires_at <= ? THEN 'pending' ELSE state END,"
            " COUNT(*) FROM tasks GROUP BY 1",
            (now,),
        ).fetchall()
    return {**dict.fromkeys(STATES, 0), **dict(rows)}


def full_decisions(path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT decision, COUNT(*) FROM tasks"
            " WHERE state IN ('approved', 'rejected') AND decision IS NOT NULL GROUP BY decision"
        ).fetchall()
    return dict(rows)


def full_reasons(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT DISTINCT value FROM tasks, json_each(tasks.reasons) ORDER BY value")
        return [row[0] for row in rows]


def assert_kept(tasks: TaskStore, now: float) -> None:
    """The kept counts and reasons are those a read of every row gives."""
    assert tasks.counts() == full_counts(tasks.path, now)
    assert tasks.decision_counts() == full_decisions(tasks.path)
    assert tasks.reasons() == full_reasons(tasks.path)


def rejected_then_stored_as_before_review48(parts: ConsoleParts, folder: Path, png_becomes: str) -> Task:
    """A flagged item rejected (through a Label Studio import), its rows in the task table and the outbox
    then rewritten as a console before review 48 stored them: each object URI's ``.png`` becomes
    ``png_becomes``, text as the JSON column holds it (a raw U+202E, or its ``\\u202e`` escape)."""
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    [task] = parts.tasks.query()
    choice = {"type": "choices", "from_name": "decision", "value": {"choices": ["reject"]}}
    annotated = {
        "data": {"skuforge_task_id": task.task_id},
        "annotations": [{"completed_by": 7, "result": [choice]}],
    }
    [outcome] = import_annotations(parts.tasks, parts.store, [annotated])
    assert outcome.outcome == "reject"
    with sqlite3.connect(folder / "console" / "tasks.sqlite3") as db:
        for table, column in (("tasks", "pending_json"), ("outbox", "payload_json")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, '.png', ?)", (png_becomes,))
    return task
