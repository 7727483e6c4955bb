"""Text that reaches people: bidirectional controls in logs, terminals and a reviewer's reason."""

from __future__ import annotations

import logging

import pytest

from shared.dlq import format_summary
from shared.observability import TextFormatter, escape_control_characters

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
