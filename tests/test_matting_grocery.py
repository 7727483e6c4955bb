"""Real-photo training masks (shared.matting.grocery) on drawn photos: no dataset needed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shared.arith.masks import hull_mask
from shared.matting import MODELS_DIR
from shared.matting.grocery import RealPairsConfig, catalogue_mask, with_reflection
from tests.support.matting import stop_at_png


def carton_on_white() -> tuple[Image.Image, np.ndarray]:
    """A carton: a blue front face and a side face as white as the background, joined by an edge."""
    image = Image.new("RGB", (200, 160), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 30, 109, 139), fill=(30, 60, 200))  # front face
    draw.rectangle((110, 30, 149, 139), fill=(253, 253, 253))  # white side face
    draw.line((149, 30, 149, 139), fill=(200, 200, 200))  # its far edge, a faint grey line
    truth = np.zeros((160, 200), dtype=bool)
    truth[30:140, 40:150] = True
    return image, truth


def test_flood_fill_loses_a_white_face_and_the_hull_keeps_it() -> None:
    image, truth = carton_on_white()
    flood = catalogue_mask(image, tolerance=8.0)
    assert not flood[:, 110:149].any(), "the flood fill should leak into the white face"
    convex = catalogue_mask(image, tolerance=8.0, convex=True)
    assert np.array_equal(convex, truth)


def test_hull_of_a_rectangle_is_itself_and_a_notch_is_filled() -> None:
    rectangle = np.zeros((50, 60), dtype=bool)
    rectangle[10:40, 5:55] = True
    assert np.array_equal(hull_mask(rectangle), rectangle)
    notched = rectangle.copy()
    notched[10:25, 20:40] = False  # a notch from the top edge, between two shoulders
    assert np.array_equal(hull_mask(notched), rectangle)
    assert not hull_mask(np.zeros((5, 5), dtype=bool)).any()


def test_a_floor_reflection_is_drawn_under_the_product_and_left_out_of_its_mask() -> None:
    """The reflection mirrors each column about that column's lowest product pixel, fades out, never
    covers the product, and is background in the training mask."""
    image = Image.new("RGB", (120, 120), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.polygon([(30, 20), (80, 20), (80, 70), (30, 80)], fill=(20, 140, 40))  # slanted bottom edge
    mask = np.asarray(image.convert("L")) < 200
    before = np.asarray(image).copy()
    after = np.asarray(with_reflection(image, mask, np.random.default_rng(1)))
    changed = np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 3
    assert not changed[mask].any(), "the product itself is untouched"
    assert changed[81:84, 32:40].any() and changed[71:74, 70:78].any(), "under each column's own bottom"
    assert not changed[:20].any() and not changed[:, :25].any() and not changed[:, 86:].any()
    # Green, fading: darker than the floor just under the product, the floor again further down.
    assert after[82, 35, 1] > after[82, 35, 0] and after[82, 35].sum() < 3 * 255
    assert np.array_equal(after[118], before[118])


def _one_catalogue_photo(tmp_path: Path) -> tuple[RealPairsConfig, Path]:
    """A dataset of one iconic photo (the Oatly sample's, with its colour profile) and a config that
    makes one 64 px catalogue pair of it, and the photo."""
    sample = Path(__file__).resolve().parents[1] / "samples" / "grocerystore" / "GROCERY-OATLY-001"
    photo = sample / "Oatly-Oat-Milk_Iconic.jpg"
    dataset = tmp_path / "dataset"
    iconic = dataset / "iconic-images-and-descriptions" / "Packages" / "Oat-Milk"
    iconic.mkdir(parents=True)
    shutil.copy(photo, iconic / "Oatly-Oat-Milk_Iconic.jpg")
    (dataset / "train.txt").write_text("")
    config = RealPairsConfig(
        dataset=dataset,
        official_onnx=MODELS_DIR / "u2netp-skuforge.onnx",
        held_out=frozenset(),
        size_px=64,
        catalogue_copies=1,
        composites=0,
    )
    return config, photo


def test_real_pairs_are_built_from_the_colours_inference_sees(tmp_path: Path) -> None:
    """The pair builder read photos with Image.open: an Adobe RGB catalogue photo (56 of the 81 iconic
    photos) trained the model on colours up to 47 levels off the sRGB ones decode_image gives it."""
    from shared.images import decode_image
    from shared.matting.grocery import write_real_pairs

    config, photo = _one_catalogue_photo(tmp_path)
    assert Image.open(photo).info.get("icc_profile"), "the sample carries its colour profile"
    write_real_pairs(config, tmp_path / "pairs")
    written = np.asarray(
        Image.open(tmp_path / "pairs" / "images" / "catalogue-000-0.png").convert("RGB"), np.int16
    )
    expected = decode_image(photo.read_bytes()).resize((64, 64), Image.Resampling.BILINEAR)
    unconverted = Image.open(photo).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(written, np.asarray(expected, np.int16))
    assert not np.array_equal(written, np.asarray(unconverted, np.int16))


def test_a_real_pairs_run_stopped_while_writing_a_mask_leaves_no_truncated_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while Pillow wrote a mask into its file left a truncated PNG under the pair's name (Pillow
    removes its file on errors, not on KeyboardInterrupt), and `train --extra` then refused the folder."""
    from shared.matting.grocery import write_real_pairs

    config, _photo = _one_catalogue_photo(tmp_path)
    Image.init()  # the PNG plugin, when no earlier test has loaded it
    save_png = Image.SAVE["PNG"]
    calls = []

    def stopped_on_the_mask(image: Image.Image, fp: Any, filename: Any) -> None:
        calls.append(image.mode)
        if len(calls) == 2:  # the pair's image, then its mask
            fp.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)  # the mask's first bytes, then the key press
            raise KeyboardInterrupt
        save_png(image, fp, filename)

    monkeypatch.setitem(Image.SAVE, "PNG", stopped_on_the_mask)
    with pytest.raises(KeyboardInterrupt):
        write_real_pairs(config, tmp_path / "pairs")
    assert calls == ["RGB", "L"]
    assert not (tmp_path / "pairs" / "masks" / "catalogue-000-0.png").exists()
    assert Image.open(tmp_path / "pairs" / "images" / "catalogue-000-0.png").size == (64, 64)
    assert not (tmp_path / "pairs" / "pairs.json").exists()


def _pair_files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


def _stopped_real_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Path, dict[str, bytes]]:
    """A real-pairs run of 3 copies of one catalogue photo into tmp_path/pairs, stopped (Ctrl-C) once its
    first pair is whole: its config, the folder, and the pair files it left."""
    from dataclasses import replace

    from shared.matting.grocery import write_real_pairs

    config, _photo = _one_catalogue_photo(tmp_path)
    config = replace(config, catalogue_copies=3)
    pairs = tmp_path / "pairs"
    with monkeypatch.context() as patched:
        patched.setitem(Image.SAVE, "PNG", stop_at_png(3))  # the first pair whole, then Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            write_real_pairs(config, pairs)
    return config, pairs, _pair_files(pairs)


def test_a_stopped_real_pairs_folder_is_refused_for_training_and_a_rerun_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped after some whole pairs left a folder without pairs.json that `train --extra` read
    as the whole set without a word; and a rerun into it was refused as an earlier run's."""
    from dataclasses import replace

    from shared.config import ConfigError
    from shared.matting.grocery import write_real_pairs
    from shared.matting.train import load_pairs

    config, pairs, stopped = _stopped_real_pairs(tmp_path, monkeypatch)
    assert sorted(stopped) == ["images/catalogue-000-0.png", "masks/catalogue-000-0.png"]

    with pytest.raises(ConfigError) as refused:
        load_pairs(pairs, 64)
    message = str(refused.value)
    assert f"--extra {pairs}:" in message and "stopped before it finished" in message
    assert "seed 12" in message and f"--out {pairs}" in message

    # Another run's options would mix two sets: refused before a pair is written.
    with pytest.raises(ValueError, match="seed 12, not 13"):
        write_real_pairs(replace(config, seed=13), pairs)
    assert _pair_files(pairs) == stopped

    # A pair the stopped run made and this one does not (its photo since taken out of the dataset):
    # left beside the finished set, it was trained on with it.
    for kind in ("images", "masks"):
        shutil.copy(pairs / kind / "catalogue-000-0.png", pairs / kind / "catalogue-001-0.png")
    summary = write_real_pairs(config, pairs)
    assert write_real_pairs(config, tmp_path / "uninterrupted") == summary
    assert _pair_files(pairs) == _pair_files(tmp_path / "uninterrupted")
    assert sorted(path.name for path in pairs.iterdir()) == ["images", "masks", "pairs.json"]
    assert len(load_pairs(pairs, 64)[0]) == 3


def test_pairs_into_a_folder_a_real_pairs_run_stopped_in_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pairs` wrote its composites beside the stopped real-pairs run's pairs, and the real-pairs rerun
    that finished the folder deleted them as pairs it had not made."""
    from services.matting.cli import main

    _, pairs, stopped = _stopped_real_pairs(tmp_path, monkeypatch)

    assert main(["pairs", "--n", "1", "--out", str(pairs)]) == 2
    err = capsys.readouterr().err
    assert "a `skuforge matting real-pairs` run stopped before it finished this folder" in err, err
    assert _pair_files(pairs) == stopped
