"""Small command-line refusals: a bad environment default of `skuforge kafka start`, a negative LoRA
rank. One line naming the setting or flag, exit 2, nothing started or written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from skuforge_cli.main import main as cli_main


class _RecordingKafka:
    """Stands in for LocalKafka: records what it was asked for and starts nothing."""

    asked: dict[str, Any] = {}

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        _RecordingKafka.asked = {"data_dir": data_dir, **kwargs}
        raise OSError("not started: a test stand-in")


@pytest.fixture
def recording_kafka(monkeypatch: pytest.MonkeyPatch) -> type[_RecordingKafka]:
    _RecordingKafka.asked = {}
    monkeypatch.setattr("devstack.broker.LocalKafka", _RecordingKafka)
    return _RecordingKafka


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("SKUFORGE_KAFKA_PORT", "70000", "must be from 1 to 65535, got 70000"),
        ("SKUFORGE_KAFKA_CONTROLLER_PORT", "0", "must be from 1 to 65535, got 0"),
        ("SKUFORGE_KAFKA_HEAP_MB", "12", "must be from 64 to 1048576, got 12"),
        ("SKUFORGE_KAFKA_PORT", "ninety", "must be a whole number in ASCII digits, got 'ninety'"),
        (
            "SKUFORGE_KAFKA_PORT",
            "\u0669\u0660\u0669\u0662",  # 9092 in Arabic-Indic digits: int() read it as the port
            "must be a whole number in ASCII digits, got '\u0669\u0660\u0669\u0662'",
        ),
    ],
)
def test_kafka_start_refuses_an_environment_default_out_of_bounds(
    name: str,
    value: str,
    reason: str,
    recording_kafka: type[_RecordingKafka],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli_main(["kafka", "start", "--data-dir", str(tmp_path / "kafka")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: {name}={value!r}: {reason}; fix or unset it, or give the option\n")
    assert "Traceback" not in err
    assert recording_kafka.asked == {} and not (tmp_path / "kafka").exists()


def test_kafka_start_options_override_the_environment_and_defaults_still_apply(
    recording_kafka: type[_RecordingKafka], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKUFORGE_KAFKA_PORT", "70000")  # not read: --port is given
    monkeypatch.setenv("SKUFORGE_KAFKA_CONTROLLER_PORT", "19093")
    monkeypatch.delenv("SKUFORGE_KAFKA_HEAP_MB", raising=False)
    assert cli_main(["kafka", "start", "--data-dir", str(tmp_path), "--port", "19092"]) == 1
    assert recording_kafka.asked == {
        "data_dir": tmp_path,
        "port": 19092,
        "controller_port": 19093,
        "heap_mb": 512,
    }


def test_adapters_register_refuses_a_rank_below_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(b"not read: the rank is refused first")
    argv = ["adapters", "register", "cola-v1", str(weights), "--kind", "general", "--base-model", "m"]
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, "--rank", "-3"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("argument --rank: must be at least 1, got -3\n") and "pydantic" not in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--port", "19093", "--controller-port", "19093"], {}),
        (["--port", "9093"], {}),  # the default controller port
        ([], {"SKUFORGE_KAFKA_PORT": "19094", "SKUFORGE_KAFKA_CONTROLLER_PORT": "19094"}),
    ],
)
def test_kafka_start_refuses_one_port_for_both_listeners_as_a_usage_error(
    argv: list[str],
    env: dict[str, str],
    recording_kafka: type[_RecordingKafka],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Was "error: port and controller_port must differ" and exit 1, the status of a broker that failed.
    for name in ("SKUFORGE_KAFKA_PORT", "SKUFORGE_KAFKA_CONTROLLER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli_main(["kafka", "start", "--data-dir", str(tmp_path / "kafka"), *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("skuforge kafka: error: --port and --controller-port are both ")
    assert recording_kafka.asked == {} and not (tmp_path / "kafka").exists()


def test_dlq_list_refuses_a_negative_sample_count(capsys: pytest.CaptureFixture[str]) -> None:
    """`--samples -1` listed no samples and said nothing (it was read as 0)."""
    with pytest.raises(SystemExit) as exited:
        cli_main(["dlq", "list", "sku.ingested.v1", "--samples", "-1"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith("argument --samples: must be 0 or more, got -1\n")


def test_serve_without_a_server_names_only_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    """`skuforge serve` said "the following arguments are required: server, args": ``args``, the
    parser's name for the server's own options, which nobody has to give."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["serve"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "skuforge serve: error: the following arguments are required: server"
    )


@pytest.mark.parametrize(
    ("name", "told"),
    [
        ("no-such-folder", "not a directory of SKU folders (it does not exist)"),
        (
            "skus.zip",
            "not a directory of SKU folders; it is an archive: unpack it and ingest the folder it holds",
        ),
    ],
)
def test_demo_skus_that_is_no_folder_says_why_as_ingest_does(
    name: str, told: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge demo --skus` of a mistyped folder or the zip one was sent said only "not a directory
    of SKU folders", where `skuforge ingest` of the same path says what it is; nothing is started."""
    path = tmp_path / name
    if name.endswith(".zip"):
        path.write_bytes(b"PK\x03\x04")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--skus", str(path), "--workdir", str(tmp_path / "up")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"skuforge demo: error: --skus {path}: {told}"
    assert not (tmp_path / "up").exists()
