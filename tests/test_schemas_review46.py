"""What review 46 left in the contract's text: a gate check's code and message and a flagged item's
reasons take the character rule of the rest of the contract's text, and a reviewer's reason an earlier
console wrote with a bidirectional control still reads where it lies in the topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from schemas.events import CorrectionPending, GateCheck
from schemas.topics import CORRECTION_PENDING
from shared.bus import make_envelope
from shared.gate.checks import CHECK_CODES
from shared.store import FileStore
from tests.support.gate import matted_item, pending_of
from tests.support.runtime import dead_letter_for
from tests.support.schemas import committed_schema

# -- a gate check's code and message, a flagged item's reasons: one line of text that reads as written --


def _pending_envelope(tmp_path: Path) -> dict[str, Any]:
    """The gate's correction.pending for one render, as JSON."""
    matted = matted_item(FileStore(tmp_path / "store"), 1, 0)
    envelope = make_envelope(
        CORRECTION_PENDING,
        pending_of(matted),
        event_id="e" * 32,
        sku_id=matted.generated.sku.sku_id,
        trace_id="t",
        producer="other",
    )
    return envelope.model_dump(mode="json")


def _set(written: dict[str, Any], field: str, text: str) -> list[str | int]:
    """Writes ``text`` into the pending payload's ``field`` (a check's code or message, or a reason);
    returns its path in the envelope."""
    payload = written["payload"]
    if field == "reasons":
        payload["reasons"][0] = text
        return ["payload", "reasons", 0]
    payload["checks"][0][field] = text
    return ["payload", "checks", 0, field]


@pytest.mark.parametrize("field", ["code", "message", "reasons"])
@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("iou_below\u202ethreshold", "bidirectional control character (U+202E at character 10)"),
        ("iou\u2066x\u2069", "bidirectional control character (U+2066 at character 4)"),
        ("iou\x1b[2J", "control character (U+001B at character 4)"),
        ("iou\nforged line", "control character (U+000A at character 4)"),
        ("iou\u2028second line", "line separator (U+2028 at character 4)"),
    ],
    ids=["override", "isolate", "escape", "newline", "line_separator"],
)
def test_a_check_or_reason_another_producer_writes_with_one_is_dead_lettered_naming_it(
    tmp_path: Path, field: str, text: str, named: str
) -> None:
    # They took any text: another producer's U+202E, terminal escape or newline went on to the console's
    # queue and item pages and into the trainstore's rows, reordered or breaking the line shown.
    written = _pending_envelope(tmp_path)
    path = _set(written, field, text)

    letter = dead_letter_for(tmp_path / "stage", written, CORRECTION_PENDING)
    where = ".".join(str(step) for step in path)
    assert letter.reason == "schema_invalid" and letter.detail.startswith(f"{where}: "), letter.detail
    assert named in letter.detail and text not in letter.detail

    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(CORRECTION_PENDING)).validate(written)
    assert list(refused.value.absolute_path) == path


@pytest.mark.parametrize(
    "text", ["iou_below_threshold", "étiquette — 50%", "\u05d7\u05ea\u200f x", "क्\u200dष"]
)
@pytest.mark.parametrize("field", ["code", "message", "reasons"])
def test_text_that_reads_as_written_is_taken_by_the_model_and_the_committed_schema(
    tmp_path: Path, field: str, text: str
) -> None:
    written = _pending_envelope(tmp_path)
    _set(written, field, text)
    CorrectionPending.model_validate(written["payload"])
    jsonschema.Draft202012Validator(committed_schema(CORRECTION_PENDING)).validate(written)


def test_every_code_the_gate_writes_is_one_the_contract_takes() -> None:
    # The gate is the only producer of checks and reasons: the tightening refuses nothing it writes.
    for code in CHECK_CODES:
        GateCheck(code=code, passed=False, value=0.0, threshold=1.0, message=f"{code} 0.5 (need >= 0.9)")


def test_the_refusal_is_the_models_too() -> None:
    with pytest.raises(ValidationError, match="U\\+202E"):
        GateCheck(code="mask_empty", passed=False, value=0.0, threshold=1.0, message="a\u202eb")
