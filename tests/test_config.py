"""Configuration: one documented table, invalid values named at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.flow import flow_table_markdown
from shared.config import ConfigError, load_settings, settings_table_markdown
from skuforge_cli.main import SETTINGS_MODELS
from skuforge_cli.main import main as cli_main

README = Path(__file__).resolve().parents[1] / "README.md"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_invalid_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_MAX_POLL_RECORDS", "zero")
    with pytest.raises(ConfigError, match="SKUFORGE_MAX_POLL_RECORDS"):
        load_settings()


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="retry_backoff_max_s must be at least"):
        load_settings(retry_backoff_initial_s=10, retry_backoff_max_s=1)


def test_cli_reports_config_errors_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_LOG_LEVEL", "LOUD")
    assert cli_main(["config"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_LOG_LEVEL" in err and "Traceback" not in err


def test_topic_namespace_prefixes_every_topic() -> None:
    from schemas.topics import GATE_ACCEPTED

    settings = load_settings(topic_namespace="staging.")
    assert settings.topic_name(GATE_ACCEPTED) == "staging.gate.accepted.v1"
    assert settings.dlq_name(GATE_ACCEPTED) == "staging.gate.accepted.v1.dlq"
    with pytest.raises(ConfigError, match="SKUFORGE_TOPIC_NAMESPACE"):
        load_settings(topic_namespace="bad/name")


def test_readme_carries_the_current_settings_table() -> None:
    assert settings_table_markdown(SETTINGS_MODELS) in README.read_text(), (
        "README's configuration table is stale: paste `skuforge config --markdown` into it"
    )


def test_architecture_carries_the_current_flow_table() -> None:
    assert flow_table_markdown() in ARCHITECTURE.read_text(), (
        "docs/architecture.md's flow table is stale: paste `skuforge flow --markdown` into it"
    )


def test_flow_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["flow", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == flow_table_markdown()
