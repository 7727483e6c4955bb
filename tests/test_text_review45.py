"""Text that reaches people: bidirectional controls in logs, terminals and a reviewer's reason."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.console.decisions import DecisionInvalid, check_reject_reason
from shared.dlq import format_summary
from shared.observability import TextFormatter, escape_control_characters
from tests.support.console import app_for, build_console, claim, decide, flagged_item, login, pending_envelope

# The embeddings and overrides (U+202A-U+202E) and the isolates (U+2066-U+2069).
BIDI_CONTROLS = [chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]


@pytest.mark.parametrize("control", BIDI_CONTROLS)
def test_a_bidirectional_control_is_escaped_where_text_is_shown(control: str) -> None:
    # Shown as it was, U+202E made "photo_gnp.exe" read as "photo_exe.png" in a log line or a terminal.
    escaped = escape_control_characters(f"photo_{control}gnp.exe")
    assert escaped == f"photo_\\u{ord(control):04x}gnp.exe"
    assert control not in escaped


def test_marks_and_joiners_stay_text() -> None:
    # The directional marks cannot reorder a run, and ZWJ/ZWNJ join emoji and shape Indic scripts.
    for text in ("שלום\u200e 2", "\u200f", "👩\u200d💻", "क्\u200cष"):
        assert escape_control_characters(text) == text


def test_a_log_line_and_a_dead_letter_listing_show_no_bidirectional_control() -> None:
    record = logging.makeLogRecord(
        {"name": "skuforge.ingest", "levelname": "WARNING", "msg": "skipped %s", "args": ("a\u202eb",)}
    )
    record.file = "c\u2067d"
    line = TextFormatter().format(record)
    assert "skipped a\\u202eb" in line and "file=c\\u2067d" in line
    summary = {
        "dlq_topic": "sku.ingested.v1.dlq",
        "dead_letters": 1,
        "topic": "sku.ingested.v1",
        "replayed": 0,
        "unreadable_records": 0,
        "reasons": {
            "object_missing\u202d": {
                "count": 1,
                "replayed": 0,
                "permanent": False,
                "samples": [
                    {
                        "at": "0@0",
                        "event_id": "e1",
                        "sku_id": "sku-1",
                        "stage": "passthrough",
                        "failed_at": "2026-12-07T09:00:00+00:00",
                        "detail": "gone \u202egnp.exe",
                    }
                ],
            }
        },
    }
    shown = format_summary(summary)
    assert not any(control in shown for control in BIDI_CONTROLS)
    assert "object_missing\\u202d" in shown and "gone \\u202egnp.exe" in shown


@pytest.mark.parametrize("control", BIDI_CONTROLS)
def test_a_reject_reason_with_a_bidirectional_control_is_refused_naming_it(control: str) -> None:
    # The reason is shown on the item page and in the audit trail: U+202E there made it read as another.
    with pytest.raises(DecisionInvalid, match=f"bidirectional control character \\(U\\+{ord(control):04X}"):
        check_reject_reason(f"wrong_product: {control}xob a ton ,nac a")
    # A mark and the joiners are text, as in a product's name.
    marked = "\u05ea\u05d5\u05d5\u05d9\u05ea \u200f\u05d7\u05ea\u05d5\u05db\u05d4"  # Hebrew, a mark
    assert check_reject_reason(marked) == marked
    assert check_reject_reason("लेबल कटा क्\u200dष") == "लेबल कटा क्\u200dष"


def test_the_decision_form_answers_a_reason_with_a_bidirectional_control_with_a_422(tmp_path: Path) -> None:
    parts = build_console(tmp_path, lease_s=60.0)
    parts.tasks.add_pending(pending_envelope(flagged_item(parts.store, 0, sku_id="SKU-0")))
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    task_id = parts.tasks.query()[0].task_id
    claim(client, token, task_id)
    response = decide(client, token, task_id, decision="reject", reject_reason="cut off \u2066x\u2069")
    assert response.status_code == 422
    assert "bidirectional control character (U+2066 at character 9)" in response.json()["detail"]
    assert parts.tasks.get(task_id).state == "claimed" and parts.tasks.outbox(task_id) is None


# -- results files: JSON's numbers only ---------------------------------------------------------


def test_a_results_file_with_a_nan_is_refused_at_write_naming_the_figure() -> None:
    from shared.argtypes import NonFiniteFigure, json_file_text

    document = {"k1": {"gain_top1": 0.1}, "per_sku": {"k1": {"gain": {"Kiwi": 0.0, "Lime": math.nan}}}}
    named = r"^o\.json: per_sku\.k1\.gain\.Lime is nan, which JSON has not, so it was not written$"
    with pytest.raises(NonFiniteFigure, match=named):
        json_file_text(document, label="o.json")
    with pytest.raises(NonFiniteFigure, match=r"curve\.A\[1\] is -inf"):
        json_file_text({"curve": {"A": [0.5, -math.inf]}}, label="o.json")
    assert json.loads(json_file_text(document | {"per_sku": {}}, label="o.json")) == {
        "k1": {"gain_top1": 0.1},
        "per_sku": {},
    }


def test_skuforge_evaluate_writes_neither_file_when_a_figure_is_nan(tmp_path: Path) -> None:
    # Written bare (NaN), evaluation.json was then refused by `dataset export --evaluation`.
    from services.trainstore.evaluation import EVALUATION_FILE, REPORT_FILE, write_results
    from shared.argtypes import NonFiniteFigure

    (tmp_path / EVALUATION_FILE).write_text('{"top1": {"A": 0.5}}\n')
    with pytest.raises(NonFiniteFigure, match=r"evaluation\.json: top1\.B is nan"):
        write_results(tmp_path, {"top1": {"A": 0.5, "B": math.nan}}, "<html></html>")
    assert (tmp_path / EVALUATION_FILE).read_text() == '{"top1": {"A": 0.5}}\n'
    assert not (tmp_path / REPORT_FILE).exists()


def test_bench_captioner_keeps_its_results_file_when_a_figure_is_nan(tmp_path: Path) -> None:
    from bench.captioner import write_figures
    from shared.argtypes import NonFiniteFigure

    results_file = tmp_path / "captioner.json"
    results_file.write_text('{"colour_accuracy": 0.9}\n')
    with pytest.raises(NonFiniteFigure, match=r"captioner\.json: real\.dev\.colour_accuracy is nan"):
        write_figures(results_file, {"colour_accuracy": 0.9, "real": {"dev": {"colour_accuracy": math.nan}}})
    assert results_file.read_text() == '{"colour_accuracy": 0.9}\n'
    write_figures(results_file, {"colour_accuracy": 0.95})
    assert json.loads(results_file.read_text()) == {"colour_accuracy": 0.95}


def test_bench_augment_writes_no_report_with_a_nan(tmp_path: Path) -> None:
    from bench.augment import write_report
    from shared.argtypes import NonFiniteFigure

    out = tmp_path / "results" / "augment.json"
    with pytest.raises(NonFiniteFigure, match=r"augment\.json: by_group\.k1\.Fruit\.gain_top1 is nan"):
        write_report(out, {"k1": {"gain_top1": 0.1}, "by_group": {"k1": {"Fruit": {"gain_top1": math.nan}}}})
    assert not out.exists()
    write_report(out, {"k1": {"gain_top1": 0.1}})
    assert json.loads(out.read_text()) == {"k1": {"gain_top1": 0.1}}


def test_a_bench_run_whose_results_hold_a_nan_ends_in_a_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not a traceback at the end of a long run: the line says which figure, and that nothing was written.
    from bench.augment import write_report
    from shared.commands import run_command

    out = tmp_path / "augment.json"

    def bench() -> int:
        write_report(out, {"k1": {"gain_top1": math.nan}})
        return 0

    assert run_command("python -m bench.augment", bench) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"python -m bench.augment: {out}: k1.gain_top1 is nan, which JSON has not, so it was not written\n"
    )
    assert not out.exists()
