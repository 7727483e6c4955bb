"""`skuforge matting pairs`: composite scenes with exact expected masks, as `train --extra` reads them."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.matting.cli import main
from shared.matting.pairs import composite_pairs
from tests.support.matting import stop_at_png


def test_pairs_are_deterministic_binary_and_resumable(tmp_path: Path, capsys: object) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["pairs", "--n", "3", "--out", str(first)]) == 0
    assert main(["pairs", "--n", "3", "--out", str(second)]) == 0
    names = sorted(p.name for p in (first / "images").iterdir())
    assert names == ["c57_0000.png", "c57_0001.png", "c57_0002.png"]
    assert names == sorted(p.name for p in (first / "masks").iterdir())
    for name in names:
        image = np.asarray(Image.open(first / "images" / name))
        mask = np.asarray(Image.open(first / "masks" / name))
        assert image.shape[:2] == mask.shape == ((384, 384) if name.endswith("2.png") else (512, 512))
        assert set(np.unique(mask)) <= {0, 255} and 0 < (mask == 255).mean() < 0.9
        assert (first / "images" / name).read_bytes() == (second / "images" / name).read_bytes()
    rows = [json.loads(line) for line in (first / "index.jsonl").read_text().splitlines()]
    assert [row["name"] for row in rows] == [n.removesuffix(".png") for n in names]
    # A second run over the same folder writes nothing new.
    assert main(["pairs", "--n", "3", "--out", str(first)]) == 0
    assert len((first / "index.jsonl").read_text().splitlines()) == 3


def test_roi_pairs_are_the_scene_cropped_around_the_product(tmp_path: Path) -> None:
    whole, roi = tmp_path / "whole", tmp_path / "roi"
    assert main(["pairs", "--n", "3", "--out", str(whole)]) == 0
    assert main(["pairs", "--n", "3", "--roi", "--out", str(roi)]) == 0
    cropped = 0
    for index in range(3):
        scene = np.asarray(Image.open(whole / "images" / f"c57_{index:04d}.png"))
        scene_mask = np.asarray(Image.open(whole / "masks" / f"c57_{index:04d}.png"))
        crop = np.asarray(Image.open(roi / "images" / f"r57_{index:04d}.png"))
        crop_mask = np.asarray(Image.open(roi / "masks" / f"r57_{index:04d}.png"))
        assert crop.shape[:2] == crop_mask.shape and crop.shape[0] <= scene.shape[0]
        cropped += crop.shape[0] < scene.shape[0]
        # The crop is a window of the same scene, holding all of the product.
        hits = [
            (top, left)
            for top in range(scene.shape[0] - crop.shape[0] + 1)
            for left in range(scene.shape[1] - crop.shape[1] + 1)
            if np.array_equal(scene[top, left : left + crop.shape[1]], crop[0])
            and np.array_equal(scene[top : top + crop.shape[0], left : left + crop.shape[1]], crop)
        ]
        assert hits
        assert np.count_nonzero(crop_mask) == np.count_nonzero(scene_mask)
    assert cropped  # (a box as large as the scene is the scene)


def test_a_pair_a_killed_run_left_half_written_is_written_again(tmp_path: Path, capsys: object) -> None:
    # A run killed while saving a mask left it truncated under its own name, and its index line was
    # still in the buffer: the rerun took the pair as done, and train --extra then refused the mask.
    # A leftover temporary file is no pair either.
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["pairs", "--n", "2", "--out", str(whole)]) == 0
    assert main(["pairs", "--n", "2", "--out", str(killed)]) == 0
    index = killed / "index.jsonl"
    # Pair 1's line never left the buffer; a line cut off by the kill is no pair either.
    index.write_text(index.read_text().splitlines(keepends=True)[0] + '{"name": "c57_00')
    mask = killed / "masks" / "c57_0001.png"
    mask.write_bytes(mask.read_bytes()[:100])
    (killed / "masks" / ".partial-c57_0001").write_bytes(b"a temporary file the kill left")

    assert main(["pairs", "--n", "2", "--out", str(killed)]) == 0

    for name in ("c57_0000.png", "c57_0001.png"):
        for part in ("images", "masks"):
            assert (killed / part / name).read_bytes() == (whole / part / name).read_bytes(), (part, name)
    listed = (whole / "index.jsonl").read_text().splitlines()
    assert index.read_text().splitlines() == [listed[0], '{"name": "c57_00', listed[1]]


def test_each_pair_is_in_the_index_once_it_is_written(tmp_path: Path) -> None:
    # The index was written through a buffer: a killed run lost the lines of pairs it had written.
    pairs = composite_pairs(tmp_path, 2)
    assert isinstance(pairs, Generator)  # closed below, as a caller that stops early does
    first = next(pairs)
    try:
        rows = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
        assert [row["name"] for row in rows] == [first.name]
    finally:
        pairs.close()


def test_a_stopped_pairs_folder_is_refused_for_training_until_a_rerun_finishes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped after some whole pairs left index.jsonl listing only those: `train --extra` read
    that part of the set as the whole of it without a word."""
    from shared.config import ConfigError
    from shared.matting.train import load_pairs

    pairs = tmp_path / "pairs"
    with monkeypatch.context() as patched:
        patched.setitem(Image.SAVE, "PNG", stop_at_png(3))  # the first pair whole, then Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            main(["pairs", "--n", "3", "--roi", "--out", str(pairs)])
    assert sorted(path.name for path in (pairs / "masks").iterdir()) == ["r57_0000.png"]

    with pytest.raises(ConfigError) as refused:
        load_pairs(pairs, 64)
    message = str(refused.value)
    assert f"--extra {pairs}: a `skuforge matting pairs` run stopped before it finished" in message
    assert f"`skuforge matting pairs --n 3 --catalogue-seed 57 --roi --out {pairs}`" in message
    quick = ["--steps", "1", "--batch", "2", "--train-images", "2", "--out", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit) as exited:  # refused before a step is trained
        main(["train", *quick, "--checkpoint", str(tmp_path / "checkpoint.pt"), "--extra", str(pairs)])
    assert exited.value.code == 2
    assert "a `skuforge matting pairs` run stopped before it finished" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()

    # Another catalogue or crop would leave the stopped run's part of a set beside the new one.
    assert main(["pairs", "--n", "3", "--out", str(pairs)]) == 2
    assert "(roi True, not False)" in capsys.readouterr().err
    assert sorted(path.name for path in (pairs / "masks").iterdir()) == ["r57_0000.png"]

    # Any --n finishes it: pair i is the same whatever the count.
    assert main(["pairs", "--n", "2", "--roi", "--out", str(pairs)]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 1
    assert sorted(path.name for path in pairs.iterdir()) == ["images", "index.jsonl", "masks"]
    assert len(load_pairs(pairs, 64)[0]) == 2


def test_pairs_into_a_finished_set_of_another_catalogue_or_crop_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished folder has no marker: a run with another --catalogue-seed (or --roi) wrote its set
    beside the first (c57_* and c58_* pairs in one folder), and `train --extra` trained on both."""
    pairs = tmp_path / "pairs"
    assert main(["pairs", "--n", "1", "--out", str(pairs)]) == 0
    capsys.readouterr()
    for other in (["--catalogue-seed", "58"], ["--roi"]):
        assert main(["pairs", "--n", "1", *other, "--out", str(pairs)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"{pairs}" in err and "--catalogue-seed 57" in err and "another folder" in err
        assert sorted(path.name for path in (pairs / "images").iterdir()) == ["c57_0000.png"]
        assert len((pairs / "index.jsonl").read_text().splitlines()) == 1
    # The same catalogue and crop still adds to it (a larger --n continues the set).
    assert main(["pairs", "--n", "2", "--out", str(pairs)]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 1


def test_a_name_in_other_scripts_digits_is_no_pair_of_another_set(tmp_path: Path) -> None:
    # \d matched any script's digits and int() read them: a file named c\u0661_0000.png (Arabic-Indic
    # one), which no run writes, was taken for a pair of --catalogue-seed 1 and the folder refused.
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "c\u0661_0000.png")
    assert [pair.name for pair in composite_pairs(tmp_path, 1)] == ["c57_0000"]
