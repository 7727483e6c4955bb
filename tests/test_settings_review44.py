"""Settings and options at start-up: a JSON setting with a key given twice is refused, naming the variable
and the key (JSON keeps the last one without a word); a JSON setting that is no JSON is named without the
whole value echoed; an empty path option is refused, not read as the current folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gate.config import GateSettings
from shared.config import ConfigError, load_settings
from shared.generation.settings import GenerationSettings
from tests.support.cli import refusal_of, refuse_to_run


@pytest.mark.parametrize(
    ("variable", "value", "repeated"),
    [
        ("SKUFORGE_GENERATION_BACKEND_MIX", '{"composite": 3, "composite": 0}', "'composite'"),
        ("SKUFORGE_GENERATION_PARAMETERS", '{"occluders": 0, "occluders": 2}', "'occluders'"),
        ("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"iou_min": 0.8}, "pouch": {}}', "'pouch'"),
    ],
)
def test_a_json_setting_with_a_key_given_twice_is_refused(
    variable: str, value: str, repeated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the generation settings kept the last: a mix of '{"composite": 3, ..., "composite": 0}'
    # ran every variant on diffusion, and a knob given twice was sent with its second value.
    monkeypatch.setenv(variable, value)
    model = GateSettings if "GATE" in variable else GenerationSettings
    with pytest.raises(ConfigError, match=rf"{variable}: .*{repeated} given 2 times"):
        load_settings(model)


def test_a_json_setting_given_once_each_still_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND_MIX", '{"composite": 3, "diffusion": 1}')
    monkeypatch.setenv("SKUFORGE_GENERATION_PARAMETERS", '{"occluders": 0}')
    settings = load_settings(GenerationSettings)
    assert settings.shares() == {"composite": 0.75, "diffusion": 0.25}
    assert settings.generation_parameters == {"occluders": 0}
    monkeypatch.delenv("SKUFORGE_GENERATION_BACKEND_MIX")
    given = load_settings(GenerationSettings, generation_backend_mix={"composite": 1})
    assert given.shares() == {"composite": 1.0}


@pytest.mark.parametrize(
    "variable",
    ["SKUFORGE_GATE_CATEGORY_OVERRIDES", "SKUFORGE_GENERATION_BACKEND_MIX", "SKUFORGE_GENERATION_PARAMETERS"],
)
def test_a_long_value_that_is_no_json_is_not_echoed_whole(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gate's refusal echoed the whole value: a 100 KB value was a 100 KB line in the log.
    monkeypatch.setenv(variable, "{" + "x" * 100_000)
    model = GateSettings if "GATE" in variable else GenerationSettings
    with pytest.raises(ConfigError, match=rf"{variable}: not JSON") as refused:
        load_settings(model)
    assert len(str(refused.value)) < 1_000, str(refused.value)[:2_000]
    assert "{}" in str(refused.value)  # what to write for none


@pytest.mark.parametrize(
    "argv",
    [
        ["official", "--onnx", ""],
        ["official", "--wheel", ""],
        ["real-pairs", "--dataset", "", "--out", "{tmp}/p"],
    ],
)
def test_matting_cli_refuses_an_empty_path(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Path("") is the current folder: `--onnx "$ONNX"` with ONNX unset copied "." and `--dataset ""`
    # looked for train.txt where the user stood.
    from services.matting.cli import main as matting_cli

    option = argv[argv.index("") - 1]
    err = refusal_of(matting_cli, [word.format(tmp=tmp_path) for word in argv], capsys)
    assert f"argument {option}: the path is empty" in err


def test_the_real_photo_bench_refuses_an_empty_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import matting_real

    monkeypatch.setattr(matting_real, "load_items", refuse_to_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "val.txt").write_text("")  # the current folder looks like a dataset: "" was taken as it
    err = refusal_of(matting_real.main, ["--dataset", ""], capsys)
    assert "argument --dataset: the path is empty" in err
    monkeypatch.setenv("SKUFORGE_GROCERY_DATASET", "")  # as Compose passes an unset one: unset
    err = refusal_of(matting_real.main, [], capsys)
    assert "--dataset (or SKUFORGE_GROCERY_DATASET) must be" in err
