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


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # Before, each of these passed `skuforge config` and failed later: inf crashed ingest
        # (OverflowError) or killed the console's item page (JSON has no Infinity); a store URI of an
        # unknown scheme was a traceback in every command; a short session secret was a traceback at
        # `serve console`; a lease of 1e7 s overflowed the browser's renew timer, which then fired at
        # once, again and again.
        ("SKUFORGE_FLUSH_TIMEOUT_S", "inf", "Input should be a finite number"),
        ("SKUFORGE_GATE_IOU_MIN", "nan", "Input should be a finite number"),
        ("SKUFORGE_STORE_URI", "ftp://x", "unsupported object-store scheme 'ftp'"),
        ("SKUFORGE_STORE_URI", "file://", "names no directory"),
        ("SKUFORGE_STORE_URI", "s3:///prefix", "names no bucket"),
        # These passed the settings and were a ValueError traceback in every stage and command that
        # opened the store, after ingest had checked every photo.
        ("SKUFORGE_STORE_URI", "s3://ab/x", "invalid S3 bucket name 'ab'"),
        ("SKUFORGE_STORE_URI", "s3://my_bucket!/x", "invalid S3 bucket name 'my_bucket!'"),
        ("SKUFORGE_STORE_URI", "s3://bucket/a//b", "empty segment"),
        ("SKUFORGE_STORE_URI", "s3://bucket/a/../b", "'..' segment"),
        ("SKUFORGE_CONSOLE_LEASE_S", "1e7", "less than or equal to 86400"),
        ("SKUFORGE_CONSOLE_SESSION_TTL_S", "99999999999999", "less than or equal to 2592000"),
        ("SKUFORGE_CONSOLE_SESSION_SECRET", "short-secret", "at least 16 bytes"),
        # A traceback from kafka-python's own code in ingest and topics create, found in review.
        ("SKUFORGE_KAFKA_BOOTSTRAP", "localhost:abc", "'localhost:abc' is not host:port"),
        ("SKUFORGE_KAFKA_BOOTSTRAP", "a:9092,b", "'b' is not host:port"),
        ("SKUFORGE_KAFKA_BOOTSTRAP", "a:99999", "'a:99999' is not host:port"),
        # Over Kafka's 32-bit ints: the stage ran, never joined its group, and logged only a struct error.
        ("SKUFORGE_MAX_POLL_INTERVAL_MS", "6000000000", "less than or equal to 2147483647"),
        ("SKUFORGE_SESSION_TIMEOUT_MS", "3000000000", "less than or equal to 2147483647"),
        # Positive, so accepted: a busy loop of admin requests to the broker, or of retries.
        ("SKUFORGE_GROUP_LAG_INTERVAL_S", "1e-300", "must be 0 (off) or at least 1 s"),
        ("SKUFORGE_RETRY_BACKOFF_INITIAL_S", "1e-300", "greater than or equal to 0.01"),
        ("SKUFORGE_RETRY_BACKOFF_MAX_S", "1e-300", "greater than or equal to 0.01"),
        # The LoRA trainer's worker read its training requests from the store in a busy loop.
        ("SKUFORGE_LORA_POLL_S", "1e-300", "greater than or equal to 0.5"),
    ],
)
def test_a_setting_that_would_fail_later_is_refused_by_skuforge_config(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli_main(["config"]) == 2
    err = capsys.readouterr().err
    assert variable in err and message in err and "Traceback" not in err, err
    if "SECRET" in variable:
        assert value not in err  # a secret is never echoed


def test_a_bad_password_list_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the refusal printed the value it refused: every reviewer's password, in the log.
    monkeypatch.setenv("SKUFORGE_CONSOLE_USERS", "alice:hunter2-very-secret,bob")
    assert cli_main(["config"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_CONSOLE_USERS" in err and "hunter2" not in err, err


def test_a_minimum_photo_side_no_photo_could_have_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", "1000")
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "500000")
    with pytest.raises(ConfigError, match=r"SKUFORGE_MIN_PHOTO_SIDE_PX \(1000\) squared exceeds"):
        load_settings()
    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", "0")
    with pytest.raises(ConfigError, match="SKUFORGE_MIN_PHOTO_SIDE_PX"):
        load_settings()


def test_bootstrap_lists_that_connect_still_pass() -> None:
    for bootstrap in ("127.0.0.1:9092", "kafka-0.kafka:9092, kafka-1.kafka:9092", "[::1]:9092"):
        assert load_settings(kafka_bootstrap=bootstrap).kafka_bootstrap == bootstrap


def test_store_uris_that_open_still_pass() -> None:
    for uri in (
        "file://./var/store",
        "file:///tmp/x",
        "file://localhost/tmp/x",
        "s3://bucket/prefix",
        "var/x",
    ):
        assert load_settings(store_uri=uri).store_uri == uri


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


def test_an_empty_s3_endpoint_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose passes an unset variable as an empty one; boto3 refuses "" as an endpoint."""
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", "")
    assert load_settings().s3_endpoint_url is None


def test_the_secret_variables_are_those_skuforge_config_never_prints() -> None:
    """stack.json leaves these out of the settings it hands the stack's clients."""
    from shared.config import secret_variables
    from skuforge_cli.main import SETTINGS_MODELS

    assert secret_variables(SETTINGS_MODELS) == {
        "SKUFORGE_CONSOLE_SESSION_SECRET",
        "SKUFORGE_CONSOLE_USERS",
        "SKUFORGE_KAFKA_SASL_PASSWORD",
    }
