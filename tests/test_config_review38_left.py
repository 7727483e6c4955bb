"""What today's config review left: number options read with plain int() or float(), a port in
ports.json in other digits, and two settings whose blank or spaced value broke the rule every other
name follows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import gate
from devstack.up import saved_ports
from services.matting import cli as matting_cli
from services.matting.config import MattingSettings
from shared.captioning import fit_shape
from shared.config import ConfigError, Settings, load_settings
from shared.generation.settings import GenerationSettings
from skuforge_cli import dlq as dlq_cli


def _usage_error(
    main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("share", "why"), [("\u0660.5", "ASCII digits"), ("2", "from 0 to 1"), ("nan", "0 to 1")]
)
def test_a_reflection_share_that_is_no_share_is_refused_before_the_dataset_is_looked_at(
    share: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """0.5 in Arabic-Indic digits ran as 0.5 (float() reads any script's); a share past 1 was refused
    only once the dataset and the official model had been found and checked."""
    err = _usage_error(
        matting_cli.main, ["real-pairs", "--dataset", str(tmp_path), "--reflection-share", share], capsys
    )
    assert "--reflection-share" in err and why in err


@pytest.mark.parametrize(("seed", "why"), [("\u0663", "ASCII digits"), ("-2", "from -1")])
def test_the_gate_bench_refuses_an_other_seed_that_is_no_seed(
    seed: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """'٣' ran the second composite bench at seed 3, and -2 skipped it as -1 does."""
    err = _usage_error(gate.main, ["--other-seed", seed], capsys)
    assert "--other-seed" in err and why in err


@pytest.mark.parametrize("margin", ["\u0660.1", "inf", "nan"])
def test_the_gate_bench_refuses_a_roi_margin_that_is_no_number(
    margin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """float() read 0.1 in Arabic-Indic digits as 0.1, and 'inf' and 'nan' passed the check for a
    negative margin; 'nan < 0' is false."""
    err = _usage_error(gate.main, ["--roi-margin", margin], capsys)
    assert "--roi-margin" in err and "not the committed run" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--seed", "\u0663", "--eval-seed", "3"],
        ["--seed", "3", "--eval-seed", "\u0663"],
        ["--seed", "-1", "--eval-seed", "-1"],
    ],
)
def test_fit_shape_refuses_a_catalogue_seed_that_is_no_seed(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'٣' was catalogue 3; -1 passed the parser and the catalogue refused it with a traceback once the
    matting session was loaded. (Each argv here would also be one seed twice, which is refused too.)"""
    err = _usage_error(fit_shape.main, [*argv, "--out", str(tmp_path / "shape.py")], capsys)
    assert "seed" in err and "must differ" not in err


def test_a_port_in_other_digits_in_ports_json_is_chosen_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'٩٠٩٢' (str.isdecimal() is true of any script's digits) was the port 9092: what reads as no number."""
    path = tmp_path / "ports.json"
    path.write_text(json.dumps({"kafka": "\u0669\u0660\u0669\u0662", "gate": "9093"}))
    assert saved_ports(path) == {"gate": 9093}
    assert "kafka" in capsys.readouterr().err


def test_a_blank_adapter_id_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_GENERATION_ADAPTER_ID", " ")
    assert load_settings(GenerationSettings).generation_adapter_id is None


@pytest.mark.parametrize("adapter_id", [" none ", "none\n", " cola-0123456789ab"])
def test_spaces_around_an_adapter_id_are_refused_naming_the_variable(
    adapter_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """' none ' was the base model (the check stripped it) while ' ' was refused as no adapter id."""
    monkeypatch.setenv("SKUFORGE_GENERATION_ADAPTER_ID", adapter_id)
    with pytest.raises(ConfigError, match=r"SKUFORGE_GENERATION_ADAPTER_ID: .*spaces around it"):
        load_settings(GenerationSettings)


@pytest.mark.parametrize("blank", [" ", "\t"])
def test_a_blank_kafka_bootstrap_is_unset(blank: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was refused as "'' is not host:port", while every other blank setting is unset."""
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", blank)
    assert load_settings().kafka_bootstrap == Settings.model_fields["kafka_bootstrap"].default


@pytest.mark.parametrize("threshold", ["\u0660.5", "\u0660.\u0665"])
def test_a_matting_threshold_in_other_digits_is_refused_at_start_up(
    threshold: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its validator read the number with float(), which reads any script's digits: 0.5 in Arabic-Indic
    digits was the threshold 0.5, where pydantic, which reads every other number setting, refuses it."""
    monkeypatch.setenv("SKUFORGE_MATTING_THRESHOLD", threshold)
    with pytest.raises(ConfigError, match=r"SKUFORGE_MATTING_THRESHOLD: .*'otsu' or a number"):
        load_settings(MattingSettings)


@pytest.mark.parametrize("since", ["\u0663d", "1.\u0665h"])
def test_a_dlq_since_in_other_digits_is_a_usage_error(since: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The duration's pattern read its amount with \\d, which matches any script's digits, and float()
    read them: `skuforge dlq replay T --since ٣d` replayed the letters of the last 3 days."""
    err = _usage_error(
        dlq_cli.build_parser().parse_args, ["replay", "sku.captioned.v1", "--since", since], capsys
    )
    assert "--since" in err and "duration" in err
    assert dlq_cli.build_parser().parse_args(["replay", "sku.captioned.v1", "--since", "3d"]).since
