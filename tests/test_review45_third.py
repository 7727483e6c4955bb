"""Third review of review 45's later changes (de4c1876..509facc8): what those changes left."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from schemas.events import MAX_MESSAGE_CHARS, CorrectionResolved
from services.console.decisions import MAX_REASON_CHARS
from services.console.tasks import UnreadableDecision
from tests.support.console import build_console, decide_as_alice, with_flagged

# -- console outbox: a stored reason escaped past the contract's length --------------------------


def test_a_stored_reason_of_many_bidirectional_controls_is_sent_cut_to_the_contracts_length(
    tmp_path: Path,
) -> None:
    # A console before 7d7d9e28 took a reason of up to MAX_REASON_CHARS characters, bidirectional
    # controls included. 509facc8 sends such a decision with each control escaped (six characters for
    # one): a reason of 180 of them became 1,095 characters, past the contract's 1,000, and the decision
    # no longer read, set aside unsent as it was before that fix.
    reason = "wrong_product: " + "\u202e" * (MAX_REASON_CHARS - len("wrong_product: "))
    assert len(reason) <= MAX_REASON_CHARS
    parts = with_flagged(build_console(tmp_path / "console"), 1)
    task_id = parts.tasks.query()[0].task_id
    decide_as_alice(parts, task_id, "reject", "wrong_product")
    with sqlite3.connect(parts.tasks.path) as db:
        row = db.execute("SELECT payload_json FROM outbox WHERE task_id = ?", (task_id,)).fetchone()
        payload = json.loads(row[0]) | {"reject_reason": reason}
        db.execute("UPDATE outbox SET payload_json = ? WHERE task_id = ?", (json.dumps(payload), task_id))
    [unsent] = parts.tasks.unsent()
    assert not isinstance(unsent, UnreadableDecision), unsent
    sent = unsent.payload.reject_reason
    assert sent is not None
    assert len(sent) <= MAX_MESSAGE_CHARS
    assert sent.startswith("wrong_product: \\u202e\\u202e")
    assert "\u202e" not in sent
    # Cut between two escapes, never in the middle of one.
    assert sent.endswith("\\u202e")
    CorrectionResolved.model_validate_json(unsent.payload.model_dump_json())  # what consumers read


# -- skuforge up: a log's lines said on the terminal ----------------------------------------------

# A service's log holds what it printed as it was: a traceback's last line quotes its input (a file name,
# a record's key), and a JVM's stack trace indents with tabs.
RAW_LINES = [
    "ValueError: no photo named 'shelf\x1b]0;owned\x07.png'",
    "\tat kafka.log.LogManager.startup(LogManager.scala:1)",
    "wrong_product: \u202exob a ton",
]


def _escaped_on_the_terminal(lines: list[str]) -> None:
    assert lines, lines
    for line in lines:
        assert not any(char in line for char in "\x1b\x07\t\u202e"), lines
    assert "ValueError: no photo named 'shelf\\x1b]0;owned\\x07.png'" in lines
    assert "        at kafka.log.LogManager.startup(LogManager.scala:1)" in lines  # a tab as spaces


def test_a_dead_services_last_lines_are_said_escaped(tmp_path: Path) -> None:
    # 824df6b7 says a dead service's last log lines on up's terminal (and b6ea801d in a start's failure):
    # as they were, a terminal escape in one retitled or cleared the user's terminal, and a
    # bidirectional control reordered the line, as no other line skuforge says does.
    from devstack.supervisor import START_MARK, run_tail, run_tail_text

    log = tmp_path / "stage.log"
    log.write_text(f"--- 2026-12-07T10:00:00{START_MARK}python -m stage\n" + "\n".join(RAW_LINES) + "\n")
    _escaped_on_the_terminal(run_tail(log))
    _escaped_on_the_terminal(run_tail_text(log).splitlines())


def test_a_brokers_lines_of_this_start_are_said_escaped(tmp_path: Path) -> None:
    # ddf23756 and 6656356c say broker.out's and server.log's lines of this start on the terminal.
    from devstack.broker import _lines_since

    log = tmp_path / "broker.out"
    log.write_text("an earlier start's line\n")
    start = log.stat().st_size
    with log.open("a") as out:
        out.write("\n".join(RAW_LINES) + "\n")
    _escaped_on_the_terminal(_lines_since(log, start))
