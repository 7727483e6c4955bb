"""Reviewers who read as one person, a queue raced to its end, anonymous Label Studio annotators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from schemas.envelope import derive_id
from services.console.config import parse_users
from services.console.labelstudio import import_annotations, mask_to_rle
from services.console.tasks import TaskFilter, TaskStore
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    SIZE_PX,
    Clock,
    build_console,
    flagged_item,
    pending_envelope,
    table_is_busy,
    with_flagged,
)


@pytest.mark.parametrize(
    ("users", "refused"),
    [
        ("alice:a-long-password,Alice:another-password", "'Alice'"),
        ("ALICE:a-long-password,bob:pw,alice:another-password", "'alice'"),
        # `$` also matched before a final newline: "alice\n" was a second reviewer beside "alice".
        ("alice:a-long-password,alice\n:another-password", "expected 'name:password"),
    ],
)
def test_reviewers_whose_names_read_as_one_are_refused_at_start_up(
    users: str,
    refused: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`Alice` and `alice` were two reviewers, with two passwords, whose decisions the audit, the queue's
    "claimed (alice)" and Label Studio's export showed under names a person reads as one."""
    with pytest.raises(ValueError, match=refused):
        parse_users(users)
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(tmp_path / "tasks.sqlite3"))
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", users)
    assert cli_main(["serve", "console"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_CONSOLE_USERS: Value error, " in err and refused in err, err
    assert "invalid configuration" in err and "another-password" not in err and "Traceback" not in err


def test_names_are_ascii_so_no_unicode_form_of_a_reviewer_is_a_second_one() -> None:
    # NFKC folds the full-width spelling of "alice" into "alice": the name rule refuses it already.
    with pytest.raises(ValueError, match="expected 'name:password"):
        parse_users("alice:a-long-password,\uff41\uff4c\uff49\uff43\uff45:another-password")
    assert parse_users("alice:pw1,bob:pw2") == {"alice": "pw1", "bob": "pw2"}


class _RivalReviewers:
    """Alice's clock: each time her task table reads it, bob (another connection to the same file)
    claims the oldest pending task, as a crowd of reviewers faster than her would; not while her write
    transaction holds the table, which he would wait for."""

    def __init__(self, rival: TaskStore, now: float) -> None:
        self.rival, self.now, self.taken = rival, now, 0

    def __call__(self) -> float:
        oldest = [] if table_is_busy(self.rival.path) else self.rival.query(limit=1)
        if oldest:
            self.rival.claim(oldest[0].task_id, "bob", 600.0)
            self.taken += 1
        return self.now


def test_claim_next_keeps_looking_when_others_claim_what_it_listed(tmp_path: Path) -> None:
    """claim_next listed the 20 oldest pending tasks and tried each; when others claimed all 20 first it
    answered "nothing left to claim" though 40 more were pending."""
    store = FileStore(tmp_path / "store")
    flagged = pending_envelope(flagged_item(store, 0))
    clock = Clock()
    table = tmp_path / "tasks.sqlite3"
    setup = TaskStore(table, clock=clock)
    for index in range(60):
        setup.add_pending(flagged.model_copy(update={"event_id": derive_id("rival-test", str(index))}))
        clock.advance(1.0)
    rivals = _RivalReviewers(TaskStore(table, clock=clock), clock.now)
    alice = TaskStore(table, clock=rivals)
    alice.query(limit=20)  # her queue page, then "claim next"
    task = alice.claim_next("alice", 60.0)
    assert task is not None, f"nothing claimed, with {setup.count()} tasks still pending"
    assert (task.state, task.claimed_by) == ("claimed", "alice")
    # The oldest pending one when she claimed it: every task before it is bob's.
    held = {t.task_id: t.claimed_by for t in setup.query(TaskFilter(state="claimed"), limit=100)}
    older = [t for t in setup.query(TaskFilter(state=None), limit=100) if t.received_at < task.received_at]
    assert older and all(held[t.task_id] == "bob" for t in older)


def _anonymous(decision: str, *, at: str, number: int | None, reason: str = "") -> dict[str, Any]:
    """A Label Studio annotation that names no annotator (no ``completed_by``), with id ``number``."""
    result: list[dict[str, Any]] = [
        {"type": "choices", "from_name": "decision", "value": {"choices": [decision]}}
    ]
    if reason:
        result.append({"type": "textarea", "from_name": "reason", "value": {"text": [reason]}})
    annotation: dict[str, Any] = {"created_at": at, "updated_at": at, "result": result}
    if number is not None:
        annotation["id"] = number
    return annotation


def _painted_anonymously(mask: npt.NDArray[np.uint8], *, at: str, number: int) -> dict[str, Any]:
    value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["product"]}
    brush = {"type": "brushlabels", "from_name": "mask", "to_name": "image", "value": value}
    return {"id": number, "created_at": at, "updated_at": at, "result": [brush]}


@pytest.mark.parametrize(("first", "second"), [(11, 12), (None, None)])
def test_annotations_that_name_no_annotator_are_not_one_persons_drafts(
    tmp_path: Path, first: int | None, second: int | None
) -> None:
    """Every annotation with no ``completed_by`` was ``labelstudio:unknown``: two people's approval and
    rejection read as one person's draft and revision, and the later one was recorded without a word.
    Each is now an annotator of its own (named by its annotation id), so they disagree and are skipped."""
    parts = with_flagged(build_console(tmp_path), 1)
    (task_id,) = [task.task_id for task in parts.tasks.query()]
    annotations = [
        _anonymous("reject", at="2026-01-01T09:00:00Z", number=first, reason="not the product"),
        _anonymous("approve", at="2026-01-01T10:00:00Z", number=second),
    ]
    export = [{"data": {"skuforge_task_id": task_id}, "annotations": annotations}]
    (outcome,) = import_annotations(parts.tasks, parts.store, export)
    assert outcome.outcome == "skipped" and "annotators disagree" in outcome.detail, outcome
    if first is not None:
        assert "approved by labelstudio:anonymous-12, rejected by labelstudio:anonymous-11" in outcome.detail
    assert parts.tasks.get(task_id).state == "pending"


def test_anonymous_annotators_who_agree_give_the_latest_under_its_own_name(tmp_path: Path) -> None:
    parts = with_flagged(build_console(tmp_path), 1)
    (task_id,) = [task.task_id for task in parts.tasks.query()]
    annotations = [
        _anonymous("reject", at="2026-01-01T10:00:00Z", number=12, reason="dented"),
        _anonymous("reject", at="2026-01-01T09:00:00Z", number=11, reason="blurry"),
    ]
    export = [{"data": {"skuforge_task_id": task_id}, "annotations": annotations}]
    (outcome,) = import_annotations(parts.tasks, parts.store, export)
    assert outcome.outcome == "reject", outcome
    task = parts.tasks.get(task_id)
    assert (task.state, task.decided_by) == ("rejected", "labelstudio:anonymous-12")


def test_anonymous_annotators_who_paint_different_masks_disagree(tmp_path: Path) -> None:
    parts = with_flagged(build_console(tmp_path), 1)
    (task_id,) = [task.task_id for task in parts.tasks.query()]
    left = np.zeros((SIZE_PX, SIZE_PX), np.uint8)
    right = left.copy()
    left[10:100, 10:60] = 255
    right[10:100, 50:110] = 255
    annotations = [
        _painted_anonymously(left, at="2026-01-01T09:00:00Z", number=11),
        _painted_anonymously(right, at="2026-01-01T10:00:00Z", number=12),
    ]
    export = [{"data": {"skuforge_task_id": task_id}, "annotations": annotations}]
    (outcome,) = import_annotations(parts.tasks, parts.store, export)
    assert outcome.outcome == "skipped" and "annotators' masks disagree" in outcome.detail, outcome
    assert "labelstudio:anonymous-11 and labelstudio:anonymous-12" in outcome.detail
    assert parts.tasks.get(task_id).state == "pending"
