"""The Label Studio hand-off skips the one item it cannot use, with the reason, and goes on with the
rest; the commands' exit status says whether anything was skipped."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.console.labelstudio import export_tasks, import_annotations, mask_to_rle
from shared.errors import TransientError
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    build_console,
    flagged_item,
    flagged_parts_fixture,
    pending_envelope,
    use_cli_on,
    with_flagged,
)

parts = flagged_parts_fixture(3)


def rejected(task_id: str) -> dict[str, Any]:
    """A Label Studio task whose annotator rejected it."""
    choice = {"type": "choices", "from_name": "decision", "value": {"choices": ["reject"]}}
    return {"data": {"skuforge_task_id": task_id}, "annotations": [{"completed_by": 7, "result": [choice]}]}


def painted(task_id: str) -> dict[str, Any]:
    """A Label Studio task whose annotator painted a mask."""
    mask = np.zeros((128, 128), np.uint8)
    mask[10:60, 10:60] = 255
    return {
        "data": {"skuforge_task_id": task_id},
        "annotations": [{"completed_by": 7, "result": [brush(mask)]}],
    }


def brush(mask: np.ndarray) -> dict[str, Any]:
    """A product-mask brush result as Label Studio exports it (the ``mask`` control, ``product`` label)."""
    value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["product"]}
    return {"type": "brushlabels", "from_name": "mask", "to_name": "image", "value": value}


def test_export_leaves_out_an_item_whose_predicted_mask_is_gone_and_exports_the_rest(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before, one missing mask raised ObjectMissing: a traceback and no file at all.
    ids = [task.task_id for task in parts.tasks.query()]
    gone = parts.tasks.get(ids[1]).pending.matted.predicted_mask
    parts.store.delete(parts.store.key_for(gone.uri))
    export = export_tasks(parts.tasks, parts.store)
    assert [task["data"]["skuforge_task_id"] for task in export.tasks] == [ids[0], ids[2]]
    assert [skip.task_id for skip in export.skipped] == [ids[1]]
    assert "object_missing" in export.skipped[0].detail

    use_cli_on(parts, monkeypatch)
    out = tmp_path / "tasks.json"
    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"skipped {ids[1]}: predicted mask unreadable: object_missing" in captured.err
    assert "1 item(s) skipped" in captured.err
    assert json.loads(captured.out.splitlines()[-1])["exported"] == 2
    assert len(json.loads(out.read_text())) == 2


def test_export_leaves_out_an_item_whose_image_is_outside_the_store_and_exports_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the image's foreign URI raised BadInput: a traceback, and no file for the other items.
    parts = with_flagged(build_console(tmp_path), 1)
    moved = flagged_item(parts.store, 1)
    generated = moved.matted.generated
    image = generated.image.model_copy(update={"uri": "s3://old-bucket/images/generated/x.png"})
    moved = moved.model_copy(
        update={
            "matted": moved.matted.model_copy(
                update={"generated": generated.model_copy(update={"image": image})}
            )
        }
    )
    parts.tasks.add_pending(pending_envelope(moved))
    kept, foreign = (task.task_id for task in parts.tasks.query())

    use_cli_on(parts, monkeypatch)
    out = tmp_path / "tasks.json"
    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"skipped {foreign}: image not in the store: foreign_uri" in captured.err
    assert [task["data"]["skuforge_task_id"] for task in json.loads(out.read_text())] == [kept]


def test_import_skips_an_unreadable_task_and_records_the_next(parts: ConsoleParts) -> None:
    # Before, the unreadable task's BadInput ended the import: the next annotation was never recorded.
    ids = [task.task_id for task in parts.tasks.query()]
    db = sqlite3.connect(parts.tasks.path)
    stored = json.loads(
        db.execute("SELECT pending_json FROM tasks WHERE task_id = ?", (ids[0],)).fetchone()[0]
    )
    stored["iou"] = "not a number"
    db.execute("UPDATE tasks SET pending_json = ? WHERE task_id = ?", (json.dumps(stored), ids[0]))
    db.commit()
    db.close()
    outcomes = import_annotations(parts.tasks, parts.store, [rejected(ids[0]), rejected(ids[1])])
    assert [outcome.outcome for outcome in outcomes] == ["skipped", "reject"]
    assert "task_unreadable" in outcomes[0].detail
    assert parts.tasks.get(ids[1]).state == "rejected"


def test_import_skips_a_mask_the_store_cannot_take_releases_its_claim_and_goes_on(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the store's TransientError ended the import and left the task claimed by
    # labelstudio:7 until the lease ran out: hidden from the web reviewers.
    ids = [task.task_id for task in parts.tasks.query()]

    def store_away(*args: object, **kwargs: object) -> None:
        raise TransientError("object store unavailable: connection refused")

    monkeypatch.setattr(parts.store, "put_image", store_away)
    outcomes = import_annotations(parts.tasks, parts.store, [painted(ids[0]), rejected(ids[1])])
    assert [outcome.outcome for outcome in outcomes] == ["skipped", "reject"]
    assert "object store unavailable" in outcomes[0].detail
    left = parts.tasks.get(ids[0])
    assert (left.state, left.claimed_by) == ("pending", None)
    assert parts.tasks.outbox(ids[0]) is None


def test_the_import_command_exits_1_when_an_annotation_was_skipped_and_0_for_unannotated_tasks(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ids = [task.task_id for task in parts.tasks.query()]
    use_cli_on(parts, monkeypatch)
    export = tmp_path / "export.json"
    unannotated = {"data": {"skuforge_task_id": ids[2]}, "annotations": []}
    export.write_text(json.dumps([rejected(ids[0]), unannotated]))
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(export)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "decided": 1,
        "skipped": 0,
        "not_annotated": 1,
        "published": 0,
    }
    unknown = rejected("f" * 32)
    export.write_text(json.dumps([unknown, rejected(ids[1])]))
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(export)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["skipped"] == 1
    assert "1 annotation(s) skipped, not recorded" in captured.err
    assert parts.tasks.get(ids[1]).state == "rejected"


def _brush(task_id: str, mask: np.ndarray) -> dict[str, Any]:
    return {
        "data": {"skuforge_task_id": task_id},
        "annotations": [{"completed_by": 7, "result": [brush(mask)]}],
    }


def test_import_refuses_an_empty_or_full_brush_mask_as_the_web_page_does(parts: ConsoleParts) -> None:
    """An annotator who erased every stroke was recorded as approve_edited with an empty mask, which the
    web page refuses: a "corrected" mask of nothing went to training."""
    ids = [task.task_id for task in parts.tasks.query()]
    empty = np.zeros((128, 128), np.uint8)
    full = np.full((128, 128), 255, np.uint8)
    outcomes = import_annotations(parts.tasks, parts.store, [_brush(ids[0], empty), _brush(ids[1], full)])
    assert [o.outcome for o in outcomes] == ["skipped", "skipped"]
    assert "marks no product pixels" in outcomes[0].detail and "every pixel" in outcomes[1].detail
    assert all(o.annotation_lost for o in outcomes)
    assert {parts.tasks.get(task_id).state for task_id in ids[:2]} == {"pending"}  # no claim left behind


def test_importing_an_export_again_skips_what_it_decided_without_calling_it_lost(parts: ConsoleParts) -> None:
    """A second import of the same export counted every task it had decided as "annotation lost" (exit 1)."""
    ids = [task.task_id for task in parts.tasks.query()]
    export = [rejected(ids[0]), painted(ids[1])]
    first = import_annotations(parts.tasks, parts.store, export)
    assert [o.outcome for o in first] == ["reject", "approve_edited"]
    again = import_annotations(parts.tasks, parts.store, export)
    assert [(o.outcome, o.detail) for o in again] == [("skipped", "already decided")] * 2
    assert not any(o.annotation_lost for o in again)


def test_an_annotation_whose_was_cancelled_is_not_true_or_false_is_skipped_with_the_reason(
    parts: ConsoleParts,
) -> None:
    # Before, any truthy value cancelled: the string "false" dropped the annotation as "no annotation",
    # which is not counted as lost (exit 0), and the reviewer's rejection was never recorded.
    ids = [task.task_id for task in parts.tasks.query()]
    export = [rejected(task_id) for task_id in ids]
    export[0]["annotations"][0]["was_cancelled"] = "false"
    export[1]["annotations"][0]["was_cancelled"] = False
    export[2]["annotations"][0]["was_cancelled"] = True
    outcomes = import_annotations(parts.tasks, parts.store, export)
    assert [(o.outcome, o.annotation_lost) for o in outcomes] == [
        ("skipped", True),
        ("reject", False),
        ("skipped", False),
    ]
    assert "'was_cancelled' is 'false', not true or false" in outcomes[0].detail
    assert [parts.tasks.get(task_id).state for task_id in ids] == ["pending", "rejected", "pending"]


def test_a_reject_reason_over_the_limit_is_recorded_marked_as_cut(parts: ConsoleParts) -> None:
    # Before, it was cut to its first 200 characters without a sign: the audit trail and the published
    # decision read as if that were the annotator's whole reason.
    ids = [task.task_id for task in parts.tasks.query()]
    entry = rejected(ids[0])
    words = " ".join(f"word{n}" for n in range(60))  # 349 characters
    entry["annotations"][0]["result"].append(
        {"type": "textarea", "from_name": "reason", "value": {"text": [words]}}
    )
    [outcome] = import_annotations(parts.tasks, parts.store, [entry])
    [recorded] = [e.detail for e in parts.tasks.audit(ids[0]) if e.action == "reject"]
    assert outcome.outcome == "reject" and outcome.detail == recorded
    assert len(recorded) <= 200 and recorded.startswith("word0 word1 ") and recorded.endswith("… [cut]")


def test_a_reject_reason_comes_from_the_reason_text_area_only(parts: ConsoleParts) -> None:
    # Before, every text area was joined into the reason: an annotator's private notes in another one
    # of the project's config were recorded and published with the decision.
    ids = [task.task_id for task in parts.tasks.query()]
    entry = rejected(ids[0])
    entry["annotations"][0]["result"] += [
        {"type": "textarea", "from_name": "notes", "value": {"text": ["ask Bob, he knows the supplier"]}},
        {"type": "textarea", "from_name": "reason", "value": {"text": ["blurry"]}},
    ]
    [outcome] = import_annotations(parts.tasks, parts.store, [entry])
    assert (outcome.outcome, outcome.detail) == ("reject", "blurry")
    assert [e.detail for e in parts.tasks.audit(ids[0]) if e.action == "reject"] == ["blurry"]


def test_an_approve_without_a_stroke_records_the_predicted_mask_as_the_web_pages_approve_does(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A project that does not copy predictions into annotations exports an approval as the choice
    # alone. Before, it was skipped as "no brush mask" and counted lost (exit 1): the reviewer's
    # approval was never recorded, however often the export was imported.
    ids = [task.task_id for task in parts.tasks.query()]
    choice = {"type": "choices", "from_name": "decision", "value": {"choices": ["approve"]}}
    approved = {
        "data": {"skuforge_task_id": ids[0]},
        "annotations": [{"completed_by": 7, "result": [choice]}],
    }
    use_cli_on(parts, monkeypatch)
    export = tmp_path / "export.json"
    export.write_text(json.dumps([approved]))
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(export)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["decided"] == 1
    resolved = parts.tasks.outbox(ids[0])
    assert resolved is not None and resolved.payload.decision == "approve_predicted"
    assert resolved.payload.final_mask == parts.tasks.get(ids[0]).pending.matted.predicted_mask
    assert resolved.payload.reviewer == "labelstudio:7"


def test_the_import_command_reads_the_export_as_utf_8_whatever_the_locale(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Before, the file was read in the locale's encoding: under a Latin-1 locale an en dash turned into
    # control characters and the rejection was refused as "not one line" (exit 1, nothing recorded).
    ids = [task.task_id for task in parts.tasks.query()]
    said = "Etikett unleserlich \u2013 verschmiert"
    entry = rejected(ids[0])
    reason = {
        "type": "textarea",
        "from_name": "reason",
        "value": {"text": [said]},
    }
    entry["annotations"][0]["result"].append(reason)
    export = tmp_path / "export.json"
    export.write_bytes(json.dumps([entry], ensure_ascii=False).encode("utf-8"))
    # What Path.read_text consults when given no encoding: the locale's encoding, here Latin-1.
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "latin-1")
    use_cli_on(parts, monkeypatch)
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(export)]) == 0, capsys.readouterr()
    assert [e.detail for e in parts.tasks.audit(ids[0]) if e.action == "reject"] == [said]
    # A file that is not UTF-8 is refused whole, with the reason (exit 2), not read as something else.
    export.write_bytes(json.dumps([rejected(ids[1])]).replace("reject", "rejé").encode("latin-1"))
    assert cli_main(["console", "import-labelstudio", "--no-publish", str(export)]) == 2
    assert "is not UTF-8 text, as JSON is" in capsys.readouterr().err


@pytest.mark.slow
def test_export_hands_off_every_pending_item_not_the_first_ten_thousand(tmp_path: Path) -> None:
    # A fixed limit of 10,000 cut the hand-off short while the summary and exit status said all.
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    [task] = parts.tasks.query()
    with sqlite3.connect(parts.tasks.path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(tasks)")]
        copied = ", ".join(
            "printf('%032x', n)" if c == "task_id" else "received_at + n" if c == "received_at" else c
            for c in columns
        )
        db.execute(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 10000) "
            f"INSERT INTO tasks ({', '.join(columns)}) SELECT {copied} FROM tasks, seq WHERE task_id = ?",
            (task.task_id,),
        )
    assert parts.tasks.count() == 10_001
    export = export_tasks(parts.tasks, parts.store)
    assert len(export.tasks) == 10_001 and not export.skipped
    assert len(export_tasks(parts.tasks, parts.store, limit=3).tasks) == 3


def test_a_product_stroke_in_a_format_other_than_rle_is_skipped_naming_the_format(
    parts: ConsoleParts,
) -> None:
    # Before, such a stroke counted as an approval among the annotators (so a rejection by another one
    # was a "disagreement") but was dropped when the decision was read: with the approve choice the
    # predicted mask was recorded, though the annotator had painted another one.
    ids = [task.task_id for task in parts.tasks.query()]
    stroke = {
        "type": "brushlabels",
        "from_name": "mask",
        "to_name": "image",
        "value": {"format": "png", "png": "iVBORw0KGgo=", "brushlabels": ["product"]},
    }
    approve = {"type": "choices", "from_name": "decision", "value": {"choices": ["approve"]}}
    alone = {
        "data": {"skuforge_task_id": ids[0]},
        "annotations": [{"completed_by": 7, "result": [stroke, approve]}],
    }
    beside_a_rejection = rejected(ids[1])
    beside_a_rejection["annotations"].append({"completed_by": 8, "result": [stroke]})
    outcomes = import_annotations(parts.tasks, parts.store, [alone, beside_a_rejection])
    assert [outcome.outcome for outcome in outcomes] == ["skipped", "skipped"]
    for outcome in outcomes:
        assert "format is 'png'" in outcome.detail and "disagree" not in outcome.detail, outcome.detail
    assert [parts.tasks.get(task_id).state for task_id in ids[:2]] == ["pending", "pending"]
