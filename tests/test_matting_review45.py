"""Review 45 of the matting tools and library.

An empty path option (``--out "$OUT"`` with OUT unset) was read as Path(""), the current folder:
``skuforge matting pairs --out ""`` wrote its images/ and masks/ where the user stood, ``eval ""`` looked
for a model there. Each path option of ``skuforge matting``, ``bench.matting_real`` and
``shared.captioning.fit_shape`` now refuses it as the other commands do (``path_argument``): exit 2,
naming the option, before any work.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.support.cli import refusal_of

# (module, argv with "" where the path goes, the option argparse names)
EMPTY_PATHS = [
    ("services.matting.cli", ["train", "--extra", ""], "--extra"),
    ("services.matting.cli", ["train", "--init", ""], "--init"),
    ("services.matting.cli", ["train", "--out", ""], "--out"),
    ("services.matting.cli", ["train", "--checkpoint", ""], "--checkpoint"),
    ("services.matting.cli", ["pairs", "--out", ""], "--out"),
    ("services.matting.cli", ["official", "--out", ""], "--out"),
    ("services.matting.cli", ["official", "--pth", ""], "--pth"),
    ("services.matting.cli", ["real-pairs", "--dataset", "d", "--held-out", ""], "--held-out"),
    ("services.matting.cli", ["real-pairs", "--dataset", "d", "--out", ""], "--out"),
    ("services.matting.cli", ["eval", ""], "model_path"),
    ("services.matting.cli", ["export", "", "--out", "m.onnx"], "weights"),
    ("services.matting.cli", ["export", "w.pth", "--pth", "", "--out", "m.onnx"], "--pth"),
    ("services.matting.cli", ["export", "w.pth", "--out", ""], "--out"),
    ("services.matting.cli", ["quantize", ""], "model_path"),
    ("services.matting.cli", ["quantize", "m.onnx", "--out", ""], "--out"),
    ("services.matting.cli", ["quantize", "m.onnx", "--ranges", ""], "--ranges"),
    ("services.matting.cli", ["quantize", "m.onnx", "--calibration-photos", ""], "--calibration-photos"),
    ("services.matting.cli", ["tune-ranges", "", "--out", "r.json", "--photos", "p"], "weights"),
    ("services.matting.cli", ["tune-ranges", "w.pth", "--out", "", "--photos", "p"], "--out"),
    ("services.matting.cli", ["tune-ranges", "w.pth", "--out", "r.json", "--photos", ""], "--photos"),
    (
        "services.matting.cli",
        ["tune-ranges", "w.pth", "--out", "r.json", "--photos", "p", "--calibration-photos", ""],
        "--calibration-photos",
    ),
    ("bench.matting_real", ["--dataset", "d", "--sheet", ""], "--sheet"),
    ("bench.matting_real", ["--dataset", "d", "--out", ""], "--out"),
    ("shared.captioning.fit_shape", ["--out", ""], "--out"),
]


@pytest.mark.parametrize(("module", "argv", "option"), EMPTY_PATHS, ids=lambda value: str(value))
def test_an_empty_path_is_refused_naming_its_option(
    module: str,
    argv: list[str],
    option: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Run in an empty folder: read as ".", `pairs --out ""` rendered 900 pairs into the folder it ran in.
    monkeypatch.chdir(tmp_path)
    refusal = refusal_of(importlib.import_module(module).main, argv, capsys)
    assert f"argument {option}: the path is empty (an unset shell variable?)" in refusal
    assert not any(tmp_path.iterdir()), "it wrote into the folder it ran in"
