"""The ``skuforge`` command's own logging (review 44): the INFO lines of the library code a command
runs reach stderr, as text, and stdout holds only the command's result. The CLI configured no logging
(only ``run`` and ``serve`` did, through their stage's ``main``): an INFO line was never shown, and a
WARNING reached stderr through Python's last-resort handler, bare, without its fields."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.console.tasks import TaskStore
from shared.observability import configure_command_logging
from skuforge_cli.main import main as skuforge_main
from tests.support.console import outbox_from_before_refusals


def _table_before_refused_reasons(tmp_path: Path) -> Path:
    """A console task table as one made before the outbox kept why the broker refused a decision."""
    table = tmp_path / "tasks.db"
    TaskStore(table)
    outbox_from_before_refusals(table)
    return table


def test_a_library_info_line_reaches_stderr_and_stdout_holds_only_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `skuforge console refused` on an older table changes it (TaskStore adds the column): the user
    # is told so on stderr; stdout, read by a script, holds only the refused decisions (none here).
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(_table_before_refused_reasons(tmp_path)))
    monkeypatch.delenv("SKUFORGE_LOG_LEVEL", raising=False)
    assert skuforge_main(["console", "refused"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = [line for line in err.splitlines() if "now stores why the broker refused a decision" in line]
    assert " INFO skuforge.console.tasks: task table " in line


def test_skuforge_log_level_quiets_the_info_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(_table_before_refused_reasons(tmp_path)))
    monkeypatch.setenv("SKUFORGE_LOG_LEVEL", "WARNING")
    assert skuforge_main(["console", "refused"]) == 0
    assert capsys.readouterr() == ("", "")


def test_other_libraries_show_only_their_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    # botocore says "Found credentials in environment variables." at INFO on every S3 command.
    configure_command_logging("INFO")
    logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
    logging.getLogger("botocore.credentials").warning("the credentials expire soon")
    logging.getLogger("skuforge.store").info("a line of ours")
    err = capsys.readouterr().err
    assert "Found credentials" not in err
    assert "WARNING botocore.credentials: the credentials expire soon" in err
    assert "INFO skuforge.store: a line of ours" in err


def test_kafka_pythons_warnings_stay_out_and_its_errors_show(capsys: pytest.CaptureFixture[str]) -> None:
    # kafka-python gives its logger a NullHandler, so its lines never reached a command's user; shown
    # from WARNING, its "Task ... ran for 0.659s ... blocking the event loop" on a loaded machine ended up
    # in `skuforge topics create`'s stderr (test_topics_review's empty-stderr check failed in CI).
    configure_command_logging("INFO")
    logging.getLogger("kafka.net.selector").warning("Task ran for 0.659s (>0.100s threshold)")
    logging.getLogger("kafka.conn").error("the broker closed the connection")
    err = capsys.readouterr().err
    assert "Task ran for" not in err
    assert "ERROR kafka.conn: the broker closed the connection" in err
