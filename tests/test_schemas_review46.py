"""What review 46 left in the contract's text: a gate check's code and message and a flagged item's
reasons take the character rule of the rest of the contract's text, and a reviewer's reason an earlier
console wrote with a bidirectional control still reads where it lies in the topic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kafka import KafkaProducer
from kafka.structs import TopicPartition
from pydantic import ValidationError

from schemas.envelope import DeadLetter
from schemas.events import MAX_MESSAGE_CHARS, CorrectionPending, CorrectionResolved, GateCheck, ImageMatted
from schemas.topics import (
    CORRECTION_PENDING,
    CORRECTION_RESOLVED,
    DLQ_SUFFIX,
    GATE_ACCEPTED,
    SKU_CAPTIONED,
    SKU_INGESTED,
)
from services.trainstore.stage import build_stage
from shared.bus import make_envelope, read_envelope
from shared.config import load_settings
from shared.gate.checks import CHECK_CODES
from shared.runtime import Stage
from shared.store import FileStore
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from tests.support.bus import create_topics, isolated_settings, record_count, running, wait_consumed
from tests.support.gate import matted_item, pending_of, resolved
from tests.support.runtime import _Producer, _record, _wired
from tests.support.schemas import committed_schema, ingested_envelope

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
def test_a_check_or_reason_with_one_is_refused_to_a_producer_and_read_escaped_from_a_topic(
    tmp_path: Path, field: str, text: str, named: str
) -> None:
    # They took any text: another producer's U+202E, terminal escape or newline went on to the console's
    # queue and item pages and into the trainstore's rows, reordered or breaking the line shown. A
    # producer's model and the committed schema refuse it, naming the character.
    written = _pending_envelope(tmp_path)
    path = _set(written, field, text)

    with pytest.raises(ValidationError) as refused_model:
        CorrectionPending.model_validate(written["payload"])
    assert named in str(refused_model.value) and text not in str(refused_model.value)
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(CORRECTION_PENDING)).validate(written)
    assert list(refused.value.absolute_path) == path

    # An event already in the topic (or a dead letter, or a console's task) from before is read with the
    # character escaped, as the console's pages show it: dead-lettered, a replay failed alike.
    read: Any = read_envelope(CORRECTION_PENDING, json.dumps(written)).model_dump(mode="json")
    for step in path:
        read = read[step]
    assert read == text.encode("unicode_escape").decode("ascii")


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


# -- correction.resolved: a reason an earlier console wrote with a bidirectional control still reads ---


def _trainstore(tmp_path: Path) -> tuple[FileStore, Stage, _Producer]:
    """The trainstore stage (correction.resolved's reader) on a file store, wired to a recording producer."""
    store = FileStore(tmp_path / "store")
    stage = build_stage(
        trainstore=load_settings(TrainstoreSettings),
        settings=load_settings(store_uri=f"file://{tmp_path / 'store'}"),
    )
    _, producer = _wired(stage)
    return store, stage, producer


def _rejection_as_written(matted: ImageMatted, reason: str) -> bytes:
    """A console's correction.resolved rejecting ``matted`` with ``reason`` as its bytes on the topic:
    written as JSON, as a console before the contract refused a bidirectional control wrote it."""
    envelope = make_envelope(
        CORRECTION_RESOLVED,
        resolved(FileStore(Path("/nowhere")), matted, "reject"),
        event_id="f" * 32,
        sku_id=matted.generated.sku.sku_id,
        trace_id="t",
        producer="console",
    ).model_dump(mode="json")
    envelope["payload"]["reject_reason"] = reason
    return json.dumps(envelope).encode()


def _deliver(stage: Stage, value: bytes) -> None:
    tp = TopicPartition(stage.settings.topic_name(CORRECTION_RESOLVED), 0)
    stage._process_batch({tp: [_record(tp.topic, 0, value)]})


@pytest.mark.parametrize(
    "reason",
    ["wrong_product: \u202exob a ton", "cut off \u2066x\u2069", "\u202e" * 200],
    ids=["override", "isolate", "two_hundred_overrides"],
)
def test_a_rejection_an_earlier_console_wrote_with_a_bidi_control_is_stored_not_dead_lettered(
    tmp_path: Path, reason: str
) -> None:
    # A console before the contract refused them (4dce3f95) sent a reviewer's reason as typed. Already in
    # the topic, such a rejection was dead-lettered schema_invalid by the trainstore, and replayed, again:
    # the reviewer's decision was lost and the rejected render stayed in the store.
    store, stage, producer = _trainstore(tmp_path)
    matted = matted_item(store, 1, 0)
    sku_id, item_id = matted.generated.sku.sku_id, matted.generated.item_id

    _deliver(stage, _rejection_as_written(matted, reason))

    assert producer.acked == [], [DeadLetter.model_validate_json(value).detail for _, value in producer.acked]
    assert ManifestStore(store, "trainstore").read_sku(sku_id)[item_id].status == "rejected"


def test_a_reason_read_from_the_topic_has_its_bidi_controls_escaped_within_the_contracts_length() -> None:
    # Read as the console's item page shows it, so it reads as written and reorders nothing after it.
    matted = matted_item(FileStore(Path("/nowhere")), 1, 0)
    read = read_envelope(CORRECTION_RESOLVED, _rejection_as_written(matted, "wrong_product: \u202exob"))
    assert read.payload.reject_reason == "wrong_product: \\u202exob"
    # Each escape is six characters for one: cut between two, within the contract's 1,000.
    read = read_envelope(CORRECTION_RESOLVED, _rejection_as_written(matted, "\u202e" * 200))
    assert read.payload.reject_reason == "\\u202e" * (MAX_MESSAGE_CHARS // 6)


@pytest.mark.parametrize(
    "reason",
    [
        "blurry\x1b[2J \u202e",
        "label cut off\u2028second line",
        "x" * (MAX_MESSAGE_CHARS + 1),
        "\u202e" + "x" * MAX_MESSAGE_CHARS,
    ],
    ids=["escape", "line_separator", "too_long", "too_long_with_an_override"],
)
def test_a_reason_no_console_wrote_is_still_dead_lettered(tmp_path: Path, reason: str) -> None:
    # Every console refused control characters, line breaks and a reason over the contract's length: only
    # the bidirectional controls are read escaped, and another producer's terminal escape is still refused.
    store, stage, producer = _trainstore(tmp_path)
    _deliver(stage, _rejection_as_written(matted_item(store, 1, 0), reason))
    [(_, value)] = producer.acked
    letter = DeadLetter.model_validate_json(value)
    assert letter.reason == "schema_invalid" and letter.detail.startswith("payload.reject_reason: ")


def test_a_producer_is_still_refused_a_reason_with_a_bidi_control() -> None:
    # Producers are strict: only a reader escapes what is already in the topic.
    matted = matted_item(FileStore(Path("/nowhere")), 1, 0)
    decision = resolved(FileStore(Path("/nowhere")), matted, "reject")
    with pytest.raises(ValidationError, match="U\\+202E"):
        CorrectionResolved.model_validate(decision.model_dump() | {"reject_reason": "a\u202eb"})
    written = json.loads(_rejection_as_written(matted, "a\u202eb"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(committed_schema(CORRECTION_RESOLVED)).validate(written)


# -- a SKU id ending in '.': refused by ingest, still taken by the contract --------------------------


def test_a_sku_id_ending_in_a_dot_still_reads_in_events_stores_and_the_committed_schema() -> None:
    # `skuforge ingest` refuses one (Windows drops the dot from a folder name), but an ingest before it
    # published and stored such SKUs: every event of theirs carries the id, and so does every manifest
    # row. Refused by the contract, all of them would be dead-lettered or unreadable
    # (docs/delivery.md, "Versioning": why the safe id keeps its trailing dot).
    written = ingested_envelope()
    written["sku_id"] = written["payload"]["sku"]["sku_id"] = "ABC-1."
    assert read_envelope(SKU_INGESTED, json.dumps(written)).sku_id == "ABC-1."
    jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    row = ManifestRow(item_id="p", sku_id="ABC-1.", category="soda can", source="real", status="reference")
    assert ManifestRow.model_validate_json(row.model_dump_json()).sku_id == "ABC-1."


def test_on_kafka_the_trainstore_stores_a_rejection_an_earlier_console_sent_with_a_bidi_control(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The same through the broker and the trainstore's consumer group: the decision's bytes as an
    # earlier console put them on the topic are consumed, stored, and nothing is dead-lettered.
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, GATE_ACCEPTED, CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED)
    stage = build_stage(settings=settings, trainstore=load_settings(TrainstoreSettings))
    matted = matted_item(stage.store, 1, 0)
    sku_id, item_id = matted.generated.sku.sku_id, matted.generated.item_id
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    name = settings.topic_name(CORRECTION_RESOLVED)
    producer.send(name, key=sku_id.encode(), value=_rejection_as_written(matted, "wrong_product: \u202exob"))
    producer.flush()
    producer.close()
    with running(stage):
        wait_consumed(settings, "trainstore", (CORRECTION_RESOLVED,))
    assert record_count(kafka_bootstrap, name + DLQ_SUFFIX) == 0  # the stage has stopped
    rows = ManifestStore(stage.store, load_settings(TrainstoreSettings).trainstore_prefix).read_sku(sku_id)
    assert rows[item_id].status == "rejected"
