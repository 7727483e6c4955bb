"""Option bounds the commands check at parse time (review 44): thread counts stop where the services'
settings stop, and an empty model path is refused naming the option, not read as the current folder.

Each bad value is given beside an option no command has: a value the parser took would end in
"unrecognized arguments" there, never in a run."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.argtypes import MAX_THREADS

UNKNOWN = "--no-such-option-review44"


def _refusal(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The last line of the usage error ``main`` exits with on ``argv`` (the lines above it name every
    option)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "module", ["bench.matting", "bench.matting_real", "bench.matting_memory", "bench.caption_colours"]
)
def test_a_bench_refuses_threads_past_the_services_bound(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --threads 100000 went to ONNX Runtime as asked; SKUFORGE_MATTING_THREADS stops at 256.
    main = importlib.import_module(module).main
    refusal = _refusal(main, ["--threads", str(MAX_THREADS + 1), UNKNOWN], capsys)
    assert f"argument --threads: must be from 1 to {MAX_THREADS}, got {MAX_THREADS + 1}" in refusal
    assert "unrecognized arguments" in _refusal(main, ["--threads", str(MAX_THREADS), UNKNOWN], capsys)


def test_the_services_and_the_commands_share_one_thread_bound() -> None:
    from services.captioner.config import CaptionerSettings
    from services.matting.config import MattingSettings

    for settings, field in (
        (CaptionerSettings, "captioner_matting_threads"),
        (MattingSettings, "matting_threads"),
    ):
        bounds = [getattr(rule, "le", None) for rule in settings.model_fields[field].metadata]
        assert MAX_THREADS in bounds, (settings.__name__, field, bounds)


@pytest.mark.parametrize(
    ("module", "argv", "option"),
    [
        ("bench.augment", ["--matting-model", ""], "--matting-model"),
        ("shared.captioning.fit_shape", ["--matting-model", ""], "--matting-model"),
        ("services.matting.cli", ["real-pairs", "--dataset", "d", "--official", ""], "--official"),
    ],
)
def test_an_empty_model_path_is_refused_naming_the_option(
    module: str, argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--matting-model "$MODEL"` with MODEL unset was read as the current folder.
    main = importlib.import_module(module).main
    refusal = _refusal(main, [*argv, UNKNOWN], capsys)
    assert f"argument {option}: the path is empty" in refusal


def test_a_missing_official_model_named_by_the_setting_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # "run `make setup`" does not help when SKUFORGE_OFFICIAL_U2NETP points at a file that is not there.
    from services.matting.cli import main as matting_cli

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.txt").write_text("")
    official = tmp_path / "moved-away.onnx"
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", str(official))
    argv = ["real-pairs", "--dataset", str(dataset), "--out", str(tmp_path / "p")]
    refusal = _refusal(matting_cli, argv, capsys)
    assert f"SKUFORGE_OFFICIAL_U2NETP {official}: no such file" in refusal
    assert "make setup" not in refusal
    assert "--official" not in refusal


def test_a_missing_official_model_given_as_an_option_names_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.matting.cli import main as matting_cli

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.txt").write_text("")
    official = tmp_path / "moved-away.onnx"
    monkeypatch.delenv("SKUFORGE_OFFICIAL_U2NETP", raising=False)
    argv = [
        "real-pairs",
        "--dataset",
        str(dataset),
        "--out",
        str(tmp_path / "p"),
        "--official",
        str(official),
    ]
    refusal = _refusal(matting_cli, argv, capsys)
    assert f"--official {official}: no such file" in refusal
    assert "make setup" not in refusal


@pytest.mark.parametrize("option", ["--ours", "--ours-int8", "--official"])
def test_the_real_photo_matting_bench_refuses_an_empty_model_path(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--official "$OFFICIAL"` with OFFICIAL unset was Path("."): the current folder scored as a model.
    from bench.matting_real import main

    assert f"argument {option}: the path is empty" in _refusal(main, [option, "", UNKNOWN], capsys)
