"""What review 45's text and NaN hardening left: every results writer refuses a NaN, the contract
refuses a reject reason that reorders or breaks the text shown after it, and the console shows stored
text escaped."""

from __future__ import annotations

import ast
import json
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import TypeAdapter, ValidationError
from starlette.testclient import TestClient

from schemas.common import OneLineText
from schemas.envelope import Envelope
from schemas.events import CorrectionResolved
from schemas.jsonschema import JSON_DIR
from schemas.topics import CORRECTION_RESOLVED
from services.console.tasks import UnreadableDecision
from shared.argtypes import json_file_text
from shared.bus import make_envelope
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    decide_as_alice,
    flagged_item,
    login,
    pending_envelope,
    use_cli_on,
    with_flagged,
)
from tests.support.runtime import dead_letter_for

ROOT = Path(__file__).resolve().parents[1]
# The embeddings and overrides (U+202A-U+202E) and the isolates (U+2066-U+2069).
BIDI_CONTROLS = [chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]

# -- results files: every writer goes through json_file_text ------------------------------------

# Files the benches write that hold no figure: a SKU's metadata.json for `skuforge ingest` (text only).
NOT_RESULTS = {("bench/augment.py", '(sku_dir / "metadata.json").write_text(json.dumps(metadata))')}
WRITERS = {"write_text", "write_bytes", "write", "write_atomically"}
# The results writers outside bench/: the matting model card and the real pairs' pairs.json.
LIBRARY_WRITERS = ("shared/matting/train.py", "shared/matting/grocery.py")


def _is_json_dump(node: ast.AST) -> bool:
    """``json.dumps(...)`` or ``json.dump(...)``."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("dumps", "dump")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "json"
    )


def json_written_without_the_helper(source: str) -> list[tuple[int, str]]:
    """The lines of ``source`` that write Python's json to a file (``json.dump`` to a handle, or the text
    of ``json.dumps``, directly or through a name, given to a write): NaN would be written bare."""
    tree = ast.parse(source)
    dumped_names = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(_is_json_dump(inner) for inner in ast.walk(node.value))
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if _is_json_dump(node) and isinstance(node.func, ast.Attribute) and node.func.attr == "dump":
            found.append(node.lineno)
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in WRITERS:
            continue
        given = [inner for arg in (*node.args, *(k.value for k in node.keywords)) for inner in ast.walk(arg)]
        if any(
            _is_json_dump(inner) or (isinstance(inner, ast.Name) and inner.id in dumped_names)
            for inner in given
        ):
            found.append(node.lineno)
    return [(line, lines[line - 1].strip()) for line in sorted(set(found))]


def test_no_results_writer_writes_json_that_can_hold_a_nan() -> None:
    # bench.gate, bench.matting... wrote json.dumps's text: a NaN figure went into the file bare ("NaN"),
    # which no JSON reader takes; json_file_text names the figure and writes nothing.
    paths = [*sorted((ROOT / "bench").glob("*.py")), *(ROOT / name for name in LIBRARY_WRITERS)]
    offenders = []
    for path in paths:
        relative = path.relative_to(ROOT).as_posix()
        for line, text in json_written_without_the_helper(path.read_text(encoding="utf-8")):
            if (relative, text) not in NOT_RESULTS:
                offenders.append(f"{relative}:{line}: {text}")
    assert not offenders, "write results with shared.argtypes.json_file_text:\n" + "\n".join(offenders)


def test_the_writer_check_catches_each_form() -> None:
    source = (
        "import json\n"
        "out.write_text(json.dumps(r, indent=2) + '\\n')\n"
        "report = json.dumps(r)\n"
        "print(report)\n"
        "out.write_text(report)\n"
        "json.dump(r, handle)\n"
        "write_atomically(p, json.dumps(r).encode())\n"
        "print(json.dumps(r))\n"
        "out.write_text(json_file_text(r, label='o'))\n"
    )
    assert [line for line, _ in json_written_without_the_helper(source)] == [2, 5, 6, 7]


SAMPLE = {
    "pass_rate_good": 0.9375,
    "n_images": 64,
    "by_scene": {"shelf": [0.5, 1.0, 1e-07], "hand": []},
    "machine": "vm: x86_64, 2 cores, Python 3.11 — ONNX Runtime CPU, café",
    "ok": True,
    "none": None,
    "zeta": {"b": 1, "a": 2},
}


@pytest.mark.parametrize(("indent", "sort_keys"), [(2, False), (1, False), (None, False), (2, True)])
def test_the_helper_writes_the_same_bytes_as_before_on_finite_figures(
    indent: int | None, sort_keys: bool
) -> None:
    # The writers moved to it wrote json.dumps(document, indent=...) + "\n"; their files must not change.
    before = json.dumps(SAMPLE, indent=indent, sort_keys=sort_keys) + "\n"
    assert json_file_text(SAMPLE, label="o.json", indent=indent, sort_keys=sort_keys) == before


# -- the console shows stored text escaped ---------------------------------------------------------


def _store_from_before(parts: ConsoleParts, task_id: str, reason: str) -> None:
    """The task's rejection as a console before 7d7d9e28 stored it: ``reason`` in its audit entry and
    its decision, however it reads."""
    with sqlite3.connect(parts.tasks.path) as db:
        db.execute("UPDATE audit SET detail = ? WHERE task_id = ? AND action = 'reject'", (reason, task_id))
    # The console's own checks refuse such a reason now; the table kept what they let in.


def test_the_item_page_shows_a_stored_reason_with_a_bidirectional_control_escaped(tmp_path: Path) -> None:
    # Before the console refused them (7d7d9e28), a reason "wrong_product: \u202exob a ton" was stored
    # as typed, and the item page's audit showed it reordered, reading as another reason.
    parts = with_flagged(build_console(tmp_path), 1)
    task_id = parts.tasks.query()[0].task_id
    decide_as_alice(parts, task_id, "reject", "wrong_product")
    _store_from_before(parts, task_id, "wrong_product: \u202exob a ton ,nac a")
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    page = client.get(f"/tasks/{task_id}")
    assert page.status_code == 200
    assert not any(control in page.text for control in BIDI_CONTROLS)
    assert "(wrong_product: \\u202exob a ton ,nac a)" in page.text


def test_export_labelstudio_prints_a_skips_detail_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The detail names the object that was not there, as the event wrote its URI: U+202E in it reordered
    # the line in the operator's terminal. Since review 48 the contract refuses such a URI, so a task
    # stored with one before was left out with a log line (review 49: it reads, as stored), and is
    # skipped, as no decision on it can be sent: the line says why, naming the field and the code point,
    # and shows nothing unescaped.
    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    # Made by hand: the store refuses such a key now (review 48).
    gone = parts.store.uri_for("masks/predicted/x.png").replace("/x.png", "/x\u202egnp.png")
    predicted = pending.matted.predicted_mask.model_copy(update={"uri": gone})
    pending = pending.model_copy(
        update={"matted": pending.matted.model_copy(update={"predicted_mask": predicted})}
    )
    parts.tasks.add_pending(pending_envelope(pending))
    use_cli_on(parts, monkeypatch)
    assert cli_main(["console", "export-labelstudio", "--out", str(tmp_path / "tasks.json")]) == 1
    err = capsys.readouterr().err
    assert not any(control in err for control in BIDI_CONTROLS)
    task_id = pending_envelope(pending).event_id
    assert f"skipped {task_id}: " in err
    assert "U+202E (character" in err and "pending.matted.predicted_mask.uri" in err
    assert "no decision on it can be sent" in err
    assert json.loads((tmp_path / "tasks.json").read_text()) == []


# -- the contract: a reject reason is one line of text that reads as written -------------------------


def _resolved_envelope(tmp_path: Path) -> tuple[ConsoleParts, str, dict[str, Any]]:
    """A console with one item rejected ("wrong_product"), its task id, and its correction.resolved
    envelope as JSON."""
    parts = with_flagged(build_console(tmp_path / "console"), 1)
    task_id = parts.tasks.query()[0].task_id
    decide_as_alice(parts, task_id, "reject", "wrong_product")
    outbox = parts.tasks.outbox(task_id)
    assert outbox is not None
    envelope = make_envelope(
        CORRECTION_RESOLVED,
        outbox.payload,
        event_id="d" * 32,
        sku_id="SKU-00001",
        trace_id="t",
        producer="other",
    )
    return parts, task_id, envelope.model_dump(mode="json")


@pytest.mark.parametrize(
    ("reason", "named"),
    [
        ("blurry\x1b[2J", "control character (U+001B at character 7)"),
        ("label cut off\u2028second line", "line separator (U+2028 at character 14)"),
    ],
    ids=["escape", "line_separator"],
)
def test_a_reject_reason_another_producer_writes_with_one_is_dead_lettered_naming_it(
    tmp_path: Path, reason: str, named: str
) -> None:
    # reject_reason was any str: another producer's terminal escape or line separator reached the
    # trainstore, and the console's item page and audit trail. (A bidirectional control, which an earlier
    # console wrote, is read escaped: tests/test_schemas_review46.py.)
    _, _, written = _resolved_envelope(tmp_path)
    written["payload"]["reject_reason"] = reason

    letter = dead_letter_for(tmp_path / "stage", written, CORRECTION_RESOLVED)
    assert letter.reason == "schema_invalid" and letter.detail.startswith("payload.reject_reason: ")
    assert named in letter.detail and reason not in letter.detail

    committed = json.loads((JSON_DIR / f"{CORRECTION_RESOLVED.name}.json").read_text())
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed).validate(written)
    assert list(refused.value.absolute_path) == ["payload", "reject_reason"]


@pytest.mark.parametrize(
    "reason",
    [
        "wrong_product: a can, not a box",
        "étiquette coupée — 50%",
        "\u05d7\u05ea\u05d5\u05db\u05d4 \u200fcut",
        "क्\u200dष",
    ],
    ids=["ascii", "latin", "mark", "joiner"],
)
def test_a_reason_that_reads_as_written_is_taken_by_the_model_and_the_committed_schema(
    tmp_path: Path, reason: str
) -> None:
    _, _, written = _resolved_envelope(tmp_path)
    written["payload"]["reject_reason"] = reason
    assert Envelope[CorrectionResolved].model_validate(written).payload.reject_reason == reason
    committed = json.loads((JSON_DIR / f"{CORRECTION_RESOLVED.name}.json").read_text())
    jsonschema.Draft202012Validator(committed).validate(written)


def test_the_contract_refuses_in_a_reason_what_the_console_refuses() -> None:
    # One rule: a character the console's form refuses in a reason is one the contract refuses from any
    # producer, and the other way round (lone surrogates aside: no JSON text holds one).
    from services.console.decisions import DecisionInvalid, check_reject_reason

    contract = TypeAdapter(OneLineText)
    differ = []
    for code in (*range(0xD800), *range(0xE000, 0x10000)):
        reason = f"a{chr(code)}b"
        try:
            check_reject_reason(reason)
            console_refuses = False
        except DecisionInvalid:
            console_refuses = True
        try:
            contract.validate_python(reason)
            contract_refuses = False
        except ValidationError:
            contract_refuses = True
        if console_refuses != contract_refuses:
            differ.append(f"U+{code:04X}")
    assert not differ, f"the console and the contract differ on {differ}"


def test_a_decision_stored_with_such_a_reason_before_is_sent_with_it_escaped(tmp_path: Path) -> None:
    # A console before 7d7d9e28 stored the reason as typed. Read as stored, the contract refused it and
    # the relay set the reviewer's decision aside unsent (lost unless someone resent it by hand): it is
    # sent with the reason escaped, as the item page shows it, which every consumer reads.
    parts, task_id, _ = _resolved_envelope(tmp_path)
    with sqlite3.connect(parts.tasks.path) as db:
        row = db.execute("SELECT payload_json FROM outbox WHERE task_id = ?", (task_id,)).fetchone()
        payload = json.loads(row[0]) | {"reject_reason": "wrong_product: \u202exob a ton"}
        db.execute("UPDATE outbox SET payload_json = ? WHERE task_id = ?", (json.dumps(payload), task_id))
    [unsent] = parts.tasks.unsent()
    assert not isinstance(unsent, UnreadableDecision), unsent
    assert unsent.payload.reject_reason == "wrong_product: \\u202exob a ton"
    CorrectionResolved.model_validate_json(unsent.payload.model_dump_json())  # what consumers read
