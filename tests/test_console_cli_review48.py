"""`skuforge console` after `make up` / `make demo`: the refusal names the local stack's task table; and
`skuforge run console-intake` says when it makes a new, empty table.

Every test runs in its own folder (``monkeypatch.chdir(tmp_path)``): the repository's ``var/`` is never
written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from kafka.errors import KafkaConnectionError

from services.console.intake import open_task_table
from services.console.tasks import TaskStore
from shared.observability import configure_command_logging, configure_logging
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.console import console_defaults_fixture, flagged_item, pending_envelope
from tests.support.docs import README, readme_section

defaults = console_defaults_fixture()


def test_the_refusal_names_the_up_stacks_table_and_following_it_reads_that_table(
    defaults: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # After the demo, the refusal named only var/console/tasks.sqlite3 and SKUFORGE_CONSOLE_DB_PATH: not
    # where `skuforge up` keeps the table, var/up/console/tasks.sqlite3.
    store = FileStore(defaults / "var" / "up" / "store")
    TaskStore(defaults / "var" / "up" / "console" / "tasks.sqlite3").add_pending(
        pending_envelope(flagged_item(store, 0))
    )
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert "no task table at var/console/tasks.sqlite3" in err
    assert "SKUFORGE_CONSOLE_DB_PATH=var/up/console/tasks.sqlite3" in err
    assert "SKUFORGE_STORE_URI" not in err  # `refused` reads no store

    out = defaults / "tasks.json"
    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    hint = "SKUFORGE_CONSOLE_DB_PATH=var/up/console/tasks.sqlite3 SKUFORGE_STORE_URI=file://var/up/store"
    assert hint in err
    assert not (defaults / "var" / "console").exists()  # the refusal made no table

    # The variables as the refusal names them: the export reads the stack's table and its store.
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", "var/up/console/tasks.sqlite3")
    monkeypatch.setenv("SKUFORGE_STORE_URI", "file://var/up/store")
    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["exported"] == 1


def test_without_an_up_stack_the_refusal_names_none(
    defaults: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert "no task table at var/console/tasks.sqlite3" in err
    assert "var/up" not in err


def test_the_refusal_does_not_name_the_table_it_was_given(
    defaults: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # SKUFORGE_CONSOLE_DB_PATH naming the stack's table, which is empty (0 bytes): refused as empty,
    # without a hint to set the variable to what it already is.
    table = defaults / "var" / "up" / "console" / "tasks.sqlite3"
    table.parent.mkdir(parents=True)
    table.touch()
    monkeypatch.setenv("SKUFORGE_CONSOLE_DB_PATH", str(table))
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert "is empty, not a task table" in err and "SKUFORGE_CONSOLE_DB_PATH=" not in err


def test_the_intake_says_when_it_makes_a_new_empty_table(
    defaults: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `skuforge run console-intake` with the default path beside a stack's table made a new, empty one
    # without a word, and the flags it consumed went there, not to the console's table.
    with caplog.at_level(logging.INFO, logger="skuforge.console"):
        open_task_table("var/console/tasks.sqlite3")
    said = [record.getMessage() for record in caplog.records]
    [made] = [line for line in said if "new, empty task table" in line]
    assert "var/console/tasks.sqlite3" in made and "SKUFORGE_CONSOLE_DB_PATH" in made

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="skuforge.console"):
        open_task_table("var/console/tasks.sqlite3")  # there now: opened, not made
    assert not [record for record in caplog.records if "new, empty task table" in record.getMessage()]


def _kafka_down_sentence() -> str:
    """What README says a command says against a Kafka that is down: its paragraph from there on."""
    phrase = "Against a Kafka that is down, "
    paragraphs = readme_section(README, "Metrics, alerts, dashboard").split("\n\n")
    [paragraph] = [" ".join(text.split()) for text in paragraphs if phrase in " ".join(text.split())]
    return paragraph.split(phrase, 1)[1]


def test_readme_says_which_commands_say_one_line_against_a_kafka_that_is_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # README said "a command says one line", but `skuforge run STAGE` logs as its stage does: about 30 s
    # of kafka-python's connection lines (JSON) before its own `cannot reach Kafka at ...`.
    sentence = _kafka_down_sentence()
    assert sentence.startswith("a command other than `run` and `serve` says one line"), sentence
    assert "`run STAGE` and `serve` log as their services do" in sentence, sentence

    # What each logging does with one of kafka-python's connection retries, as the sentence says.
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    saved = (root.handlers[:], root.level, kafka.level)
    retry = ("Connection failed: %s", KafkaConnectionError("111 ECONNREFUSED"))
    try:
        configure_command_logging("INFO")  # a one-shot command's
        logging.getLogger("kafka.net.manager").error(*retry)
        assert capsys.readouterr().err == ""
        configure_logging("INFO", "json")  # a stage's, as `skuforge run` starts it
        logging.getLogger("kafka.net.manager").error(*retry)
        [line] = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        kafka.setLevel(saved[2])
    assert json.loads(line)["message"] == "Connection failed: KafkaConnectionError: 111 ECONNREFUSED"
