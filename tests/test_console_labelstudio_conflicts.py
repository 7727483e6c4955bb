"""Conflicts the console settles by rule, not by arrival: annotators who approve different masks are
skipped for someone to settle, and two copies of one flagged item give the same task whichever
arrives last."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from services.console.labelstudio import export_tasks, import_annotations, mask_to_rle
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    build_console,
    flagged_item,
    flagged_parts_fixture,
    pending_envelope,
    use_cli_on,
)

parts = flagged_parts_fixture(2)


def _painted(mask: npt.NDArray[np.uint8], *, by: int, at: str) -> dict[str, Any]:
    """One annotator's approval by painting ``mask`` (the ``mask`` control's ``product`` brush)."""
    value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["product"]}
    brush = {"type": "brushlabels", "from_name": "mask", "to_name": "image", "value": value}
    return {"completed_by": by, "created_at": at, "updated_at": at, "result": [brush]}


def _box(top: int, left: int, bottom: int, right: int) -> npt.NDArray[np.uint8]:
    mask = np.zeros((128, 128), np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


def test_annotators_who_approve_different_masks_are_skipped_not_settled_by_the_latest(
    parts: ConsoleParts,
) -> None:
    """Two annotators approve, each painting a mask of their own: the later mask went into the
    training set as "corrected" and the other was dropped without a word. Masks that overlap less
    than the agreement IoU are now a disagreement like approve/reject: skipped with both names and
    the IoU, the task left pending. Masks that nearly coincide still give the latest annotation."""
    disputed, agreed = [task.task_id for task in parts.tasks.query()]
    left, right = _box(10, 10, 100, 60), _box(10, 50, 100, 110)  # IoU 10/100
    export = [
        {
            "data": {"skuforge_task_id": disputed},
            "annotations": [
                _painted(left, by=7, at="2026-01-01T09:00:00Z"),
                _painted(right, by=8, at="2026-01-01T10:00:00Z"),
            ],
        },
        {
            "data": {"skuforge_task_id": agreed},
            "annotations": [
                _painted(_box(10, 10, 100, 60), by=7, at="2026-01-01T09:00:00Z"),
                _painted(_box(10, 10, 100, 61), by=8, at="2026-01-01T10:00:00Z"),  # one column more
            ],
        },
    ]

    outcomes = {outcome.task_id: outcome for outcome in import_annotations(parts.tasks, parts.store, export)}

    skipped = outcomes[disputed]
    assert skipped.outcome == "skipped" and skipped.annotation_lost
    assert "masks disagree" in skipped.detail
    assert "labelstudio:7" in skipped.detail and "labelstudio:8" in skipped.detail
    assert "IoU 0.10" in skipped.detail
    assert parts.tasks.get(disputed).state == "pending"
    assert parts.tasks.outbox(disputed) is None
    assert outcomes[agreed].outcome == "approve_edited"
    decided = parts.tasks.get(agreed)
    assert (decided.state, decided.decided_by) == ("approved", "labelstudio:8")


def test_one_annotator_saving_twice_is_no_disagreement(parts: ConsoleParts) -> None:
    """The same annotator's annotations are drafts of one opinion: the latest is recorded."""
    task_id = parts.tasks.query()[0].task_id
    export = [
        {
            "data": {"skuforge_task_id": task_id},
            "annotations": [
                _painted(_box(10, 10, 100, 60), by=7, at="2026-01-01T09:00:00Z"),
                _painted(_box(10, 50, 100, 110), by=7, at="2026-01-01T10:00:00Z"),
            ],
        }
    ]
    [outcome] = import_annotations(parts.tasks, parts.store, export)
    assert outcome.outcome == "approve_edited"
    assert parts.tasks.get(task_id).state == "approved"


def test_an_approval_of_the_prediction_is_compared_as_the_predicted_mask(parts: ConsoleParts) -> None:
    """One annotator approves the prediction untouched, another paints a mask far from it."""
    task_id = parts.tasks.query()[0].task_id
    approve = {"type": "choices", "from_name": "decision", "value": {"choices": ["approve"]}}
    untouched = {"completed_by": 7, "created_at": "2026-01-01T09:00:00Z", "result": [approve]}
    export = [
        {
            "data": {"skuforge_task_id": task_id},
            "annotations": [untouched, _painted(_box(0, 0, 20, 20), by=8, at="2026-01-01T10:00:00Z")],
        }
    ]
    [outcome] = import_annotations(parts.tasks, parts.store, export)
    assert outcome.outcome == "skipped" and "masks disagree" in outcome.detail
    assert parts.tasks.get(task_id).state == "pending"


@pytest.mark.parametrize("order", ["a_then_b", "b_then_a"])
def test_two_copies_produced_at_the_same_time_give_the_same_task_in_either_order(
    tmp_path: Path, order: str
) -> None:
    """Two copies of one flagged item with the same ``produced_at`` and other content (the gate run
    twice in one instant, or one replayed copy restamped): whichever arrived last was shown and
    decided on, so a redelivery after a restart switched the task to the other copy's reasons. The
    same copy is now kept in either order, also when the first is delivered again."""
    parts = build_console(tmp_path)
    copy_a = pending_envelope(flagged_item(parts.store, 0))
    payload_b = copy_a.payload.model_copy(update={"reasons": ["mask_touches_border"], "iou": 0.5})
    copy_b = copy_a.model_copy(update={"payload": payload_b})
    first, second = (copy_a, copy_b) if order == "a_then_b" else (copy_b, copy_a)

    parts.tasks.add_pending(first)
    parts.tasks.add_pending(second)
    parts.tasks.add_pending(first)  # redelivered after a restart

    task = parts.tasks.get(copy_a.event_id)
    kept = max((copy_a, copy_b), key=lambda copy: copy.payload.model_dump_json())
    assert (task.reasons, task.pending) == (kept.payload.reasons, kept.payload)


def test_two_label_studio_tasks_for_one_item_are_one_items_annotations(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The tasks file imported twice into a project gives each item two Label Studio tasks. One
    annotator approved it in one, another rejected it in the other: the first was recorded and the
    second skipped as "already decided", which counts as nothing lost (exit 0), and the rejection
    vanished. Their annotations are now read together: annotators who disagree, exit 1."""
    task_id = parts.tasks.query()[0].task_id

    def chose(decision: str, by: int) -> dict[str, Any]:
        choice = {"type": "choices", "from_name": "decision", "value": {"choices": [decision]}}
        return {"completed_by": by, "created_at": "2026-01-01T10:00:00Z", "result": [choice]}

    export = [
        {"data": {"skuforge_task_id": task_id}, "annotations": [chose("approve", by=7)]},
        {"data": {"skuforge_task_id": task_id}, "annotations": [chose("reject", by=8)]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    use_cli_on(parts, monkeypatch)

    assert cli_main(["console", "import-labelstudio", "--no-publish", str(path)]) == 1

    out, err = capsys.readouterr()
    assert "annotators disagree" in out and "labelstudio:8" in out
    assert "1 annotation(s) skipped" in err
    assert parts.tasks.get(task_id).state == "pending"


def _disputed_export(task_id: str) -> list[dict[str, Any]]:
    """Two annotators approve masks that overlap at an IoU of 0.10."""
    left, right = _box(10, 10, 100, 60), _box(10, 50, 100, 110)
    annotations = [
        _painted(left, by=7, at="2026-01-01T09:00:00Z"),
        _painted(right, by=8, at="2026-01-01T10:00:00Z"),
    ]
    return [{"data": {"skuforge_task_id": task_id}, "annotations": annotations}]


def test_the_agreement_iou_is_an_option_of_the_import(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A project whose annotators paint coarse strokes agrees at a lower IoU than the gate's 0.90;
    one for fine masks at a higher one. The default stays 0.90."""
    disputed, other = [task.task_id for task in parts.tasks.query()]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_disputed_export(disputed) + _disputed_export(other)))
    use_cli_on(parts, monkeypatch)

    assert cli_main(["console", "import-labelstudio", "--no-publish", str(path)]) == 1  # default 0.90
    out, _ = capsys.readouterr()
    assert "IoU 0.10, below 0.90" in out
    # Stricter than the masks' overlap, named in the reason:
    outcome = import_annotations(parts.tasks, parts.store, _disputed_export(disputed), agree_iou=0.55)[0]
    assert outcome.outcome == "skipped" and "below 0.55" in outcome.detail

    assert cli_main(["console", "import-labelstudio", "--no-publish", "--agree-iou", "0.05", str(path)]) == 0
    assert [parts.tasks.get(task_id).state for task_id in (disputed, other)] == ["approved", "approved"]
    assert parts.tasks.get(disputed).decided_by == "labelstudio:8"  # agreed: the latest annotation


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "inf", "high"])
def test_an_agreement_iou_outside_0_to_1_is_refused_with_the_reason(
    parts: ConsoleParts,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    value: str,
) -> None:
    task_id = parts.tasks.query()[0].task_id
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_disputed_export(task_id)))
    use_cli_on(parts, monkeypatch)

    with pytest.raises(SystemExit) as exited:
        cli_main(["console", "import-labelstudio", "--agree-iou", value, str(path)])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --agree-iou: must be a number from 0 to 1, got {value}" in err or (
        f"argument --agree-iou: invalid number from 0 to 1 value: '{value}'" in err
    )
    assert parts.tasks.get(task_id).state == "pending"  # nothing was read or recorded


def test_the_import_help_names_the_agreement_option_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli_main(["console", "import-labelstudio", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--agree-iou" in text and "default 0.90" in text


def _chose(decision: str, *, by: int, at: str) -> dict[str, Any]:
    """One annotator's ``decision`` choice (a rejection with a reason)."""
    results: list[dict[str, Any]] = [
        {"type": "choices", "from_name": "decision", "value": {"choices": [decision]}}
    ]
    if decision == "reject":
        results.append({"type": "textarea", "from_name": "reason", "value": {"text": ["wrong product"]}})
    return {"completed_by": by, "created_at": at, "updated_at": at, "result": results}


def test_an_annotator_who_changed_their_mind_is_no_disagreement(parts: ConsoleParts) -> None:
    """An annotator rejected, then approved in a later annotation: their earlier one is a draft, as for
    masks. It was "annotators disagree (approved by labelstudio:7, rejected by labelstudio:7)", and
    every import of the export skipped the task and exited 1 until someone settled it with themselves."""
    alone, with_other = [task.task_id for task in parts.tasks.query()]
    box = _box(10, 10, 100, 60)
    export = [
        {
            "data": {"skuforge_task_id": alone},
            "annotations": [
                _chose("reject", by=7, at="2026-01-01T09:00:00Z"),
                _painted(box, by=7, at="2026-01-01T10:00:00Z"),
            ],
        },
        {
            # 7 rejected, 8 approved, then 7 approved too: they agree now.
            "data": {"skuforge_task_id": with_other},
            "annotations": [
                _chose("reject", by=7, at="2026-01-01T09:00:00Z"),
                _painted(box, by=8, at="2026-01-01T10:00:00Z"),
                _painted(box, by=7, at="2026-01-01T11:00:00Z"),
            ],
        },
    ]

    outcomes = import_annotations(parts.tasks, parts.store, export)

    assert [outcome.outcome for outcome in outcomes] == ["approve_edited", "approve_edited"], outcomes
    assert parts.tasks.get(alone).decided_by == "labelstudio:7"
    assert parts.tasks.get(with_other).decided_by == "labelstudio:7"


def test_an_annotator_who_still_rejects_disagrees_with_one_who_approves(parts: ConsoleParts) -> None:
    task_id = parts.tasks.query()[0].task_id
    export = [
        {
            "data": {"skuforge_task_id": task_id},
            "annotations": [
                _painted(_box(10, 10, 100, 60), by=7, at="2026-01-01T09:00:00Z"),
                _chose("reject", by=8, at="2026-01-01T10:00:00Z"),
                _chose("approve", by=8, at="2026-01-01T08:00:00Z"),  # 8's earlier draft
            ],
        }
    ]
    [outcome] = import_annotations(parts.tasks, parts.store, export)
    assert outcome.outcome == "skipped" and outcome.annotation_lost
    assert "approved by labelstudio:7, rejected by labelstudio:8" in outcome.detail
    assert parts.tasks.get(task_id).state == "pending"


def test_an_annotation_of_pixels_a_replay_replaced_since_the_export_is_skipped(parts: ConsoleParts) -> None:
    """Exported, then the gate replayed the item matted again (another predicted mask, same event id):
    an annotator's "approve" of the prediction they saw was recorded as an approval of the new mask,
    which no one had seen. The export names the pixels it sent; the import skips an annotation of
    other pixels (lost: export the item again), as the web page refuses such a decision."""
    exported = export_tasks(parts.tasks, parts.store).tasks
    replaced = exported[0]
    approve = {"type": "choices", "from_name": "decision", "value": {"choices": ["approve"]}}
    for entry in exported:
        entry["annotations"] = [{"completed_by": 7, "result": [approve]}]
    task = parts.tasks.get(replaced["data"]["skuforge_task_id"])
    envelope = pending_envelope(task.pending)
    new_mask = parts.store.put_image(
        f"masks/predicted/{task.sku_id}/{task.item_id}.png", _box(10, 10, 60, 60), digest_in_key=True
    )
    matted = task.pending.matted.model_copy(update={"predicted_mask": new_mask})
    later = envelope.produced_at + timedelta(seconds=60)
    parts.tasks.add_pending(
        envelope.model_copy(
            update={"payload": task.pending.model_copy(update={"matted": matted}), "produced_at": later}
        )
    )

    first, second = import_annotations(parts.tasks, parts.store, exported)

    assert first.outcome == "skipped" and first.annotation_lost
    assert "export it again" in first.detail
    assert parts.tasks.get(task.task_id).state == "pending"
    assert second.outcome == "approve_predicted"  # its pixels are as exported
    # An export made before exports named their pixels is imported as it was.
    del replaced["data"]["skuforge_shown"]
    (again,) = import_annotations(parts.tasks, parts.store, [replaced])
    assert again.outcome == "approve_predicted"
    assert parts.tasks.outbox(task.task_id).payload.final_mask == new_mask  # type: ignore[union-attr]
