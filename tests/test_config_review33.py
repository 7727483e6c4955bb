"""A misspelt ``SKUFORGE_*`` variable is named, with the setting it was probably meant to be.

Settings ignore variables they do not declare: ``SKUFORGE_GATE_IOU_MINIMUM=0.5`` left the gate at its
default 0.9 without a word, from ``skuforge config`` as from the gate itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from devstack.broker import free_port
from shared.config import OTHER_VARIABLES, UnknownVariable, settings_variables, unknown_variables
from skuforge_cli.main import SETTINGS_MODELS
from skuforge_cli.main import main as cli_main
from tests.support.docs import README, settings_table_in

ROOT = Path(__file__).resolve().parents[1]


def test_a_misspelt_setting_is_named_with_the_closest_known_one() -> None:
    environ = {"SKUFORGE_GATE_IOU_MINIMUM": "0.5", "SKUFORGE_GATE_IOU_MIN": "0.8", "PATH": "/bin"}
    assert unknown_variables(SETTINGS_MODELS, environ) == [
        UnknownVariable("SKUFORGE_GATE_IOU_MINIMUM", "SKUFORGE_GATE_IOU_MIN")
    ]
    assert str(unknown_variables(SETTINGS_MODELS, environ)[0]) == (
        "SKUFORGE_GATE_IOU_MINIMUM is not a skuforge setting (ignored): did you mean SKUFORGE_GATE_IOU_MIN?"
    )


def test_a_name_like_no_setting_is_named_without_a_guess() -> None:
    (unknown,) = unknown_variables(SETTINGS_MODELS, {"SKUFORGE_ZZZ": "1"})
    assert unknown == UnknownVariable("SKUFORGE_ZZZ", None)
    assert str(unknown) == (
        "SKUFORGE_ZZZ is not a skuforge setting (ignored; `skuforge config --markdown` lists them)"
    )


def test_a_setting_in_lower_case_is_read_so_it_is_known() -> None:
    # pydantic-settings reads SKUFORGE_* names whatever their case: skuforge_log_level is the setting.
    assert unknown_variables(SETTINGS_MODELS, {"skuforge_log_level": "DEBUG"}) == []
    assert unknown_variables(SETTINGS_MODELS, {"skuforge_log_levle": "DEBUG"}) == [
        UnknownVariable("skuforge_log_levle", "SKUFORGE_LOG_LEVEL")
    ]


# Where the code reads a SKUFORGE_* variable outside the settings models (as tests/test_docs_truth.py
# looks for them), and where the tests read their own knobs or CI exports one.
VARIABLE = re.compile(r"SKUFORGE_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_{])")
READ_IN_A_TEST = re.compile(r"(?:os\.environ(?:\.get\()?\[?|getenv\()\s*[\"'](SKUFORGE_[A-Z0-9_]+)[\"']")


def _read_by_the_code() -> set[str]:
    # Not shared/config.py, which lists the known names: they would all be found there.
    files = [
        path
        for package in ("schemas", "shared", "services", "devstack", "skuforge_cli", "bench")
        for path in (ROOT / package).rglob("*.py")
        if path != ROOT / "shared" / "config.py"
    ]
    files += [*(ROOT / "deploy").glob("compose*.yaml"), ROOT / "Makefile", ROOT / ".ci" / "run"]
    return {name for path in files for name in VARIABLE.findall(path.read_text(encoding="utf-8"))}


def _read_by_the_tests() -> set[str]:
    return {
        name for path in (ROOT / "tests").rglob("*.py") for name in READ_IN_A_TEST.findall(path.read_text())
    }


def test_no_variable_skuforge_reads_is_called_unknown() -> None:
    readme_names = set(VARIABLE.findall(settings_table_in(README)))
    tools_table = README.split("The tools around the services read a few more", 1)[1].split("\n## ", 1)[0]
    names = readme_names | set(VARIABLE.findall(tools_table)) | _read_by_the_code() | _read_by_the_tests()
    assert "SKUFORGE_SUPERVISOR_ID" in names and "SKUFORGE_REQUIRE_HELM" in names  # the search finds them
    assert unknown_variables(SETTINGS_MODELS, dict.fromkeys(names, "1")) == []


def test_the_other_variables_are_no_settings_and_all_read() -> None:
    # A name here that a settings model declares, or that nothing reads any longer, is stale.
    assert not OTHER_VARIABLES & settings_variables(SETTINGS_MODELS)
    stale = OTHER_VARIABLES - _read_by_the_code() - _read_by_the_tests()
    assert not stale, f"shared/config.py's OTHER_VARIABLES names variables nothing reads: {sorted(stale)}"


def test_skuforge_config_warns_of_a_misspelt_setting_and_still_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_IOU_MINIMUM", "0.5")
    assert cli_main(["config"]) == 0  # a deployment may set a newer version's variables: a warning
    captured = capsys.readouterr()
    assert captured.err == (
        "skuforge config: warning: SKUFORGE_GATE_IOU_MINIMUM is not a skuforge setting (ignored): "
        "did you mean SKUFORGE_GATE_IOU_MIN?\n"
    )
    assert json.loads(captured.out)["gate_iou_min"] == 0.9


def test_skuforge_config_warns_beside_an_invalid_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_IOU_MINIMUM", "0.5")
    monkeypatch.setenv("SKUFORGE_LOG_LEVEL", "LOUD")
    assert cli_main(["config"]) == 2
    err = capsys.readouterr().err
    assert "did you mean SKUFORGE_GATE_IOU_MIN?" in err and "SKUFORGE_LOG_LEVEL" in err


def test_a_stage_logs_one_warning_naming_the_misspelt_variable_and_still_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_signal_handlers: None
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there: the stage starts, then stops on it
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("SKUFORGE_METRICS_PORT", "0")
    monkeypatch.setenv("SKUFORGE_GROUP_LAG_INTERVAL_S", "0")
    monkeypatch.setenv("SKUFORGE_MAX_POLL_RECORD", "4")
    monkeypatch.setenv("SKUFORGE_LOG_FORMAT", "json")
    monkeypatch.setitem(KafkaConsumer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 300)
    assert cli_main(["run", "passthrough"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Kafka at {bootstrap}" in err  # it went on to start
    warnings = [json.loads(line) for line in err.splitlines() if "SKUFORGE_MAX_POLL_RECORD " in line]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "WARNING"
    assert "did you mean SKUFORGE_MAX_POLL_RECORDS?" in warnings[0]["message"]
    assert warnings[0]["variables"] == ["SKUFORGE_MAX_POLL_RECORD"]


def test_a_stage_stopped_by_an_invalid_value_still_names_the_misspelt_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_signal_handlers: None
) -> None:
    # The stage stops on the invalid value; the warning comes first all the same, in the default format.
    monkeypatch.setenv("SKUFORGE_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("SKUFORGE_LOG_LEVL", "INFO")
    assert cli_main(["run", "passthrough"]) == 2
    err = capsys.readouterr().err
    (warning,) = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert warning["level"] == "WARNING" and "did you mean SKUFORGE_LOG_LEVEL?" in warning["message"]
    assert "skuforge run: invalid configuration:" in err and "SKUFORGE_LOG_LEVEL:" in err
