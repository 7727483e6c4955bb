"""Label Studio hand-off: brush RLE in Label Studio's format, export and import round-trip masks exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from services.console.decisions import mask_from_ref
from services.console.labelstudio import (
    decode_rle,
    encode_rle,
    export_tasks,
    import_annotations,
    mask_to_rle,
    read_export,
    rle_to_mask,
)
from shared.images import decode_mask
from tests.support.console import build_console, flagged_item, pending_envelope


def test_rle_matches_label_studios_bit_layout() -> None:
    # Worked by hand from label-studio-converter's brush.encode_rle: a 1x2 mask [0, 255] is RGBA
    # [0,0,0,0,255,255,255,255]: 32-bit count 8, word size 8-1 in 5 bits, run sizes 3,4,8,16 (minus
    # one, 4 bits each), then two runs "1 00 011 <byte>", padded with zero bits to whole bytes.
    bits = (
        f"{8:032b}"
        + "00111"
        + "0010" + "0011" + "0111" + "1111"
        + "1" + "00" + "011" + "00000000"
        + "1" + "00" + "011" + "11111111"
    )  # fmt: skip
    bits += "0" * (8 - len(bits) % 8)
    expected = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert mask_to_rle(np.array([[0, 255]], dtype=np.uint8)) == expected
    assert decode_rle(expected).tolist() == [0, 0, 0, 0, 255, 255, 255, 255]


@pytest.mark.parametrize("run", [1, 2, 8, 9, 16, 17, 256, 257, 65536, 65537, 200_000])
def test_rle_round_trips_every_run_length_class(run: int) -> None:
    values = np.concatenate(
        [
            np.full(run, 255, dtype=np.uint8),
            np.array([3, 4, 4], dtype=np.uint8),
            np.zeros(run, dtype=np.uint8),
        ]
    )
    assert np.array_equal(decode_rle(encode_rle(values)), values)


def test_rle_round_trips_a_noisy_mask() -> None:
    rng = np.random.default_rng(5)
    mask = np.where(rng.random((97, 131)) > 0.5, 255, 0).astype(np.uint8)
    mask[10:60, 20:120] = 255
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), 131, 97), mask)


def _legacy_brush_rle(rgba: np.ndarray) -> list[int]:
    """Label Studio's legacy brush export (before its FF_LSDV_4583): the canvas's RGBA as rle-pack
    packs it, the painted pixels (the label's colour, channels differing) as literal runs of up to
    2**16 words, the zeros around them as repeats."""
    flat = rgba.ravel()
    painted = np.repeat(rgba.reshape(-1, 4)[:, 3] > 0, 4)
    edges = np.flatnonzero(painted[1:] != painted[:-1]) + 1
    bits = [np.array([int(b) for b in f"{flat.size:032b}00111" + "0010001101111111"], np.uint8)]
    for start, end in zip(np.concatenate(([0], edges)), np.concatenate((edges, [flat.size])), strict=True):
        for chunk in range(start, end, 2**16):
            length = min(end, chunk + 2**16) - chunk
            count = [int(b) for b in f"{length - 1:016b}"]
            if painted[start]:
                words = np.unpackbits(flat[chunk : chunk + length])
                bits.append(np.concatenate((np.array([0, 1, 1, *count], np.uint8), words)))
            else:
                bits.append(np.array([1, 1, 1, *count, *[0] * 8], np.uint8))
    return np.packbits(np.concatenate(bits)).tolist()


def test_a_large_legacy_brush_mask_decodes_exactly() -> None:
    # Label Studio's legacy brush writes a stroke's pixels as literal runs; read one word at a time,
    # bit by bit in Python, a 2048 px image painted over half its area took several seconds per task
    # (measured, not asserted here: the run-wise decoder must give every value the bitwise one did).
    height, width = 2048, 2048
    yy, xx = np.mgrid[:height, :width]
    mask = np.where(((yy - 1024) / 900) ** 2 + ((xx - 1024) / 700) ** 2 < 1, 255, 0).astype(np.uint8)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[mask > 0] = (59, 130, 246, 255)  # the label's colour, as the canvas holds it
    rle = _legacy_brush_rle(rgba)
    assert np.array_equal(rle_to_mask(rle, width, height), mask)
    assert np.array_equal(decode_rle(rle), rgba.ravel())  # every channel, word for word


def test_malformed_rle_is_refused() -> None:
    rle = mask_to_rle(np.full((4, 4), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match="ends early"):
        decode_rle(rle[:5])
    with pytest.raises(ValueError, match="image has 5x5"):
        rle_to_mask(rle, 5, 5)


def test_export_then_import_round_trips_the_mask_exactly(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    for index in range(2):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index)))
    exported = export_tasks(parts.tasks, parts.store, image_url="https://images.example/{key}").tasks
    assert len(exported) == 2
    first = exported[0]
    task = parts.tasks.get(first["data"]["skuforge_task_id"])
    assert first["data"]["image"] == "https://images.example/" + parts.store.key_for(
        task.pending.matted.generated.image.uri
    )
    prediction = first["predictions"][0]["result"][0]
    assert prediction["type"] == "brushlabels" and prediction["value"]["format"] == "rle"
    predicted = mask_from_ref(parts.store, task.pending.matted.predicted_mask)
    assert np.array_equal(
        rle_to_mask(prediction["value"]["rle"], prediction["original_width"], prediction["original_height"]),
        predicted,
    )

    # In Label Studio an annotator starts from the prediction and paints a stroke; the export holds
    # the strokes as brush results (RLE). The second item is rejected with the decision choice.
    edited = predicted.copy()
    edited[20:50, 70:110] = 255
    stroke = dict(prediction, id="stroke-1", value={**prediction["value"], "rle": mask_to_rle(edited)})
    first["annotations"] = [
        {
            "id": 1,
            "completed_by": {"id": 7, "email": "ann@example.com"},
            "result": [stroke],
            "was_cancelled": False,
        }
    ]
    exported[1]["annotations"] = [
        {
            "id": 2,
            "completed_by": 7,
            "result": [
                {
                    "type": "choices",
                    "from_name": "decision",
                    "to_name": "image",
                    "value": {"choices": ["reject"]},
                },
                {
                    "type": "textarea",
                    "from_name": "reason",
                    "to_name": "image",
                    "value": {"text": ["blurry"]},
                },
            ],
        }
    ]
    outcomes = import_annotations(parts.tasks, parts.store, read_export(json.dumps(exported)))
    assert [o.outcome for o in outcomes] == ["approve_edited", "reject"]

    resolved = parts.tasks.outbox(task.task_id)
    assert resolved is not None and resolved.payload.decision == "approve_edited"
    assert resolved.payload.reviewer == "labelstudio:ann@example.com"
    final = resolved.payload.final_mask
    assert final is not None
    assert np.array_equal(decode_mask(parts.store.read_verified(final)), edited)  # exactly, pixel for pixel
    rejected = parts.tasks.outbox(exported[1]["data"]["skuforge_task_id"])
    assert rejected is not None and rejected.payload.reject_reason == "blurry"
    assert rejected.payload.reviewer == "labelstudio:7"

    # Importing the same export again decides nothing twice.
    again = import_annotations(parts.tasks, parts.store, exported)
    assert [o.outcome for o in again] == ["skipped", "skipped"]
    assert parts.tasks.counts() == {
        "pending": 0,
        "claimed": 0,
        "approved": 1,
        "rejected": 1,
        "withdrawn": 0,
        "accepted": 0,
    }
    # The console's /metrics counts the imported decisions (the import runs as its own process, so a
    # counter the web page increments never saw them); every action is there, zero included.
    metrics = generate_latest(parts.console.metrics.registry).decode()
    for action, count in (("approve_edited", 1), ("reject", 1), ("approve_predicted", 0)):
        assert f'skuforge_console_decisions_total{{action="{action}"}} {count:.1f}' in metrics, metrics


def test_import_skips_tasks_it_cannot_use(tmp_path: Path) -> None:
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    [task] = export_tasks(parts.tasks, parts.store).tasks
    unknown = {"data": {"skuforge_task_id": "f" * 32}, "annotations": [{"result": []}]}
    cancelled = dict(task, annotations=[{"result": [], "was_cancelled": True}])
    wrong_size = dict(
        task,
        annotations=[
            {
                "result": [
                    {
                        "type": "brushlabels",
                        "from_name": "mask",
                        "value": {
                            "format": "rle",
                            "rle": mask_to_rle(np.zeros((3, 3), np.uint8)),
                            "brushlabels": ["product"],
                        },
                    }
                ]
            }
        ],
    )
    outcomes = import_annotations(parts.tasks, parts.store, [unknown, cancelled, wrong_size])
    assert [o.outcome for o in outcomes] == ["skipped"] * 3
    assert "TaskNotFound" in outcomes[0].detail and "no annotation" in outcomes[1].detail
    assert "image has 128x128" in outcomes[2].detail
    assert parts.tasks.counts()["pending"] + parts.tasks.counts()["claimed"] == 1
    with pytest.raises(ValueError, match="list of task objects"):
        read_export('{"not": "a list"}')


def test_a_reject_whose_text_or_choices_are_not_lists_of_strings_is_skipped(tmp_path: Path) -> None:
    # Before, a bare string was read letter by letter (the reason "b l u r r y" was recorded and
    # published) and a number raised TypeError: a traceback halfway through the file, the earlier
    # annotations recorded and the later ones never looked at.
    parts = build_console(tmp_path)
    for index in range(4):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index)))
    tasks = export_tasks(parts.tasks, parts.store).tasks

    def rejected(task: dict, text: object, choices: object = ("reject",)) -> dict:
        choice = {"type": "choices", "from_name": "decision", "value": {"choices": choices}}
        if isinstance(choices, tuple):
            choice["value"] = {"choices": list(choices)}
        return dict(
            task,
            annotations=[
                {"result": [choice, {"type": "textarea", "from_name": "reason", "value": {"text": text}}]}
            ],
        )

    export = [
        rejected(tasks[0], "blurry photo"),
        rejected(tasks[1], 7),
        rejected(tasks[2], ["fine"], choices=5),
        rejected(tasks[3], ["torn label", "and glare"]),
    ]
    outcomes = import_annotations(parts.tasks, parts.store, export)
    assert [o.outcome for o in outcomes] == ["skipped", "skipped", "skipped", "reject"], outcomes
    assert "'text' is not a list of strings" in outcomes[0].detail
    assert "'text' is not a list of strings" in outcomes[1].detail
    assert "'choices' is not a list of strings" in outcomes[2].detail
    assert parts.tasks.counts()["pending"] == 3
    decided = tasks[3]["data"]["skuforge_task_id"]
    assert [entry.detail for entry in parts.tasks.audit(decided) if entry.action == "reject"] == [
        "torn label and glare"
    ]


def _rle_of_runs(runs: list[tuple[int, int]], word_size: int) -> list[int]:
    """Label Studio's bit stream for ``(length, value)`` runs, each a repeat with a 16-bit count."""
    total = sum(length for length, _ in runs)
    bits = f"{total:032b}" + f"{word_size - 1:05b}" + "0010" + "0011" + "0111" + "1111"
    bits += "".join("1" + "11" + f"{length - 1:016b}" + f"{value:0{word_size}b}" for length, value in runs)
    bits += "0" * (8 - len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_a_brush_whose_words_are_wider_than_8_bits_is_skipped_with_the_reason(tmp_path: Path) -> None:
    # Brush values are bytes. Before, 16-bit words were cut to their low byte without a word (0x1ff
    # read as 255: half the image approved as product); numpy 2 raises OverflowError instead, which
    # the import did not catch: a traceback halfway through the file.
    half = 4 * 128 * 64
    wide = _rle_of_runs([(half, 0x1FF), (half, 0)], word_size=16)
    with pytest.raises(ValueError, match="16 bits"):
        decode_rle(wide)
    assert decode_rle(_rle_of_runs([(4, 3), (4, 0)], word_size=2)).tolist() == [3, 3, 3, 3, 0, 0, 0, 0]

    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    [task] = export_tasks(parts.tasks, parts.store).tasks
    brush = {
        "type": "brushlabels",
        "from_name": "mask",
        "value": {"format": "rle", "rle": wide, "brushlabels": ["product"]},
    }
    [outcome] = import_annotations(parts.tasks, parts.store, [dict(task, annotations=[{"result": [brush]}])])
    assert (outcome.outcome, outcome.annotation_lost) == ("skipped", True), outcome
    assert "RLE words are 16 bits" in outcome.detail
    assert parts.tasks.counts()["pending"] == 1


def test_only_the_product_mask_control_is_imported_as_the_product_mask(tmp_path: Path) -> None:
    # A project's config may add a brush control of its own (defects, say), or another label to the
    # mask control. Before, every brush result was joined into the product mask: the defects were
    # published as product pixels for training.
    parts = build_console(tmp_path)
    for index in range(2):
        parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, index)))
    tasks = export_tasks(parts.tasks, parts.store).tasks
    product = np.zeros((128, 128), np.uint8)
    product[10:60, 10:60] = 255
    defect = np.zeros((128, 128), np.uint8)
    defect[100:120, 100:120] = 255

    def stroke(from_name: str, label: str, mask: np.ndarray) -> dict:
        value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}
        return {"type": "brushlabels", "from_name": from_name, "to_name": "image", "value": value}

    tasks[0]["annotations"] = [
        {"result": [stroke("mask", "product", product), stroke("defects", "scratch", defect)]}
    ]
    tasks[1]["annotations"] = [
        {"result": [stroke("defects", "scratch", defect), stroke("mask", "dent", defect)]}
    ]
    outcomes = import_annotations(parts.tasks, parts.store, tasks)
    assert [o.outcome for o in outcomes] == ["approve_edited", "skipped"], outcomes
    outbox = parts.tasks.outbox(tasks[0]["data"]["skuforge_task_id"])
    assert outbox is not None
    final = outbox.payload.final_mask
    assert final is not None
    assert np.array_equal(decode_mask(parts.store.read_verified(final)), product)
    # Nothing of the product mask's control and label: skipped with why, counted as lost, left pending.
    assert outcomes[1].annotation_lost
    assert "2 brush result(s) of another control or label ignored" in outcomes[1].detail
    assert parts.tasks.get(tasks[1]["data"]["skuforge_task_id"]).state == "pending"


def test_a_prediction_approved_unchanged_is_recorded_as_approve_predicted(tmp_path: Path) -> None:
    """A project that pre-labels with predictions copies the predicted mask into the annotation; an
    annotator who approves it untouched edited nothing, so no edit is counted and no new mask stored."""
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0)))
    [exported] = export_tasks(parts.tasks, parts.store).tasks
    prediction = exported["predictions"][0]["result"][0]
    approve = {"type": "choices", "from_name": "decision", "value": {"choices": ["approve"]}}
    copied = dict(prediction, id="copied")
    exported["annotations"] = [{"id": 1, "completed_by": 7, "result": [copied, approve]}]
    masks_before = sorted(parts.store.root.rglob("*.png"))

    [outcome] = import_annotations(parts.tasks, parts.store, read_export(json.dumps([exported])))

    task = parts.tasks.get(exported["data"]["skuforge_task_id"])
    assert outcome.outcome == "approve_predicted"
    assert (task.state, task.decision) == ("approved", "approve_predicted")
    resolved = parts.tasks.outbox(task.task_id)
    assert resolved is not None and resolved.payload.final_mask == task.pending.matted.predicted_mask
    assert sorted(parts.store.root.rglob("*.png")) == masks_before, "no copy of the mask stored"
    assert [entry.action for entry in parts.tasks.audit(task.task_id)][-1] == "approve_predicted"
