"""Review 44 of the renderer (shared/synth): bad input is refused before anything is written or drawn."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.synth import blank_photo, make_product, write_sku_folders
from shared.synth.photo import MIN_SIZE
from shared.synth.shapes import View, build_shape, render_layer
from skuforge_cli.synth import main as synth_main


def test_a_too_small_size_is_refused_before_an_earlier_catalogue_is_touched(tmp_path: Path) -> None:
    # Before, the first SKU folder's photos and masks were deleted and its metadata rewritten, and only
    # then did render_photo refuse the size: a refused call had already destroyed the earlier run.
    write_sku_folders(tmp_path, skus=1, photos_per_sku=1, seed=3, size_px=MIN_SIZE)
    photo = tmp_path / "skus" / "SYN-3-0001" / "photo_01.png"
    mask = tmp_path / "masks" / "SYN-3-0001" / "photo_01.png"
    before = photo.read_bytes(), mask.read_bytes()
    with pytest.raises(ValueError, match=f"size_px must be at least {MIN_SIZE}"):
        write_sku_folders(tmp_path, skus=1, photos_per_sku=1, seed=3, size_px=MIN_SIZE - 1)
    assert (photo.read_bytes(), mask.read_bytes()) == before
    with pytest.raises(ValueError, match="seed"):
        write_sku_folders(tmp_path / "fresh", skus=1, photos_per_sku=1, seed=-1, size_px=MIN_SIZE)
    assert not (tmp_path / "fresh").exists()


def test_a_seed_whose_ids_are_too_long_is_refused_before_the_earlier_truth_goes(tmp_path: Path) -> None:
    # SYN-<seed>-NNNN must fit the 64 characters an id may have; a longer one was only found when
    # the first SKU was made, after the earlier truth.jsonl had been removed.
    write_sku_folders(tmp_path, skus=1, photos_per_sku=1, seed=3, size_px=MIN_SIZE)
    truth = (tmp_path / "truth.jsonl").read_bytes()
    with pytest.raises(ValueError, match="at most 64"):
        write_sku_folders(tmp_path, skus=1, photos_per_sku=1, seed=10**60, size_px=MIN_SIZE)
    assert (tmp_path / "truth.jsonl").read_bytes() == truth


def test_a_run_that_fails_part_way_leaves_no_truth_of_the_earlier_run(tmp_path: Path) -> None:
    # Before, truth.jsonl was only written at the end: a run that failed after replacing the first
    # SKU's photos left the earlier run's truth, whose bboxes described photos no longer there.
    write_sku_folders(tmp_path, skus=2, photos_per_sku=1, seed=3, size_px=MIN_SIZE)
    assert (tmp_path / "truth.jsonl").is_file()
    in_the_way = tmp_path / "masks" / "SYN-3-0002"
    for old in in_the_way.iterdir():
        old.unlink()
    in_the_way.rmdir()
    in_the_way.write_text("a file where the second SKU's mask folder goes\n")
    with pytest.raises(FileExistsError):
        write_sku_folders(tmp_path, skus=2, photos_per_sku=1, seed=3, size_px=2 * MIN_SIZE)
    with Image.open(tmp_path / "skus" / "SYN-3-0001" / "photo_01.png") as replaced:
        assert replaced.size == (2 * MIN_SIZE, 2 * MIN_SIZE)  # the new run got this far
    truth = tmp_path / "truth.jsonl"
    if truth.exists():  # whatever truth is left must describe the photos that are there
        for line in truth.read_text().splitlines():
            row = json.loads(line)
            with Image.open(tmp_path / row["photo"]) as photo, Image.open(tmp_path / row["mask"]) as mask:
                ys, xs = np.nonzero(np.asarray(mask))
                assert row["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                assert photo.size == mask.size


@pytest.mark.parametrize(
    ("size_px", "colour", "reason"),
    [
        (64, (300, 0, 0), "0 to 255"),
        (64, (-5, 10, 10), "0 to 255"),
        (64, (10, 10), "three"),
        (64, "teal", "known: red"),
        (0, "white", "at least 1"),
        (-3, "white", "at least 1"),
    ],
)
def test_blank_photo_refuses_what_it_cannot_draw_instead_of_drawing_something_else(
    size_px: int, colour: str | tuple[int, ...], reason: str
) -> None:
    # Before, (300, 0, 0) drew pure red (255, 0, 0), (-5, 10, 10) drew (0, 10, 10), size 0 made an
    # empty 0 x 0 picture and "teal" was a bare KeyError('teal').
    with pytest.raises(ValueError, match=reason):
        blank_photo(size_px, colour)  # type: ignore[arg-type]


def test_bench_gate_refuses_a_size_the_generator_would_refuse_at_parse_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, --size had no top: 100000 loaded the matting session and then asked the renderer for
    # three 100000 x 100000 float32 planes (120 GB), a MemoryError traceback or the OOM killer.
    from bench.gate import main as bench_gate_main
    from shared.generation.backend import MAX_SIZE_PX

    out = str(tmp_path / "g.json")
    with pytest.raises(SystemExit) as exited:
        bench_gate_main(["--n", "1", "--no-renderer-comparison", "--size", "100000", "--out", out])
    assert exited.value.code == 2
    assert f"--size: must be at most {MAX_SIZE_PX}" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


@pytest.mark.parametrize(("yaw", "elevation"), [(0.0, 0.15), (0.4, 0.0), (0.0, 0.0)])
def test_a_box_seen_square_on_renders_its_visible_faces(yaw: float, elevation: float) -> None:
    # Before, a box seen straight on (View's default yaw 0: the side face edge-on) or from level
    # (elevation 0: the top edge-on) raised numpy's LinAlgError('Singular matrix') while building it.
    spec = next(make_product(i, 0) for i in range(15) if make_product(i, 0).shape == "box")
    shape = build_shape(spec, View(height=100.0, yaw=yaw, elevation=elevation))
    layer = render_layer(shape, (64.0, 115.0), 0.0, 1.0, (128, 128))
    assert layer is not None
    rows, cols = np.nonzero(layer.alpha >= 0.5)
    height, width = rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()
    assert abs(height - 100) <= 1  # View.height is the silhouette's height, as for any other view
    if yaw == 0.0:  # only the front shows across: the box's width at the silhouette's scale
        scale = 100.0 / (math.cos(elevation) + spec.depth * spec.aspect * math.sin(elevation))
        assert abs(width - spec.aspect * scale) <= 1
    colours = shape.colour(np.array([0.0], dtype=np.float32), np.array([50.0], dtype=np.float32))
    assert np.isfinite(colours).all()


def test_synth_refuses_skus_whose_ids_would_be_too_long_with_a_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # SYN-<seed>-NNNN must fit 64 characters: --skus 10**60 rendered SKU after SKU towards an id it
    # could never write (now refused up front by write_sku_folders, which was a ValueError traceback).
    argv = ["--out", str(tmp_path / "c"), "--skus", str(10**60), "--photos-per-sku", "1", "--seed", "2"]
    with pytest.raises(SystemExit) as exited:
        synth_main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--skus" in err and "at most 64" in err
    assert not (tmp_path / "c").exists()


def test_the_demo_refuses_synthetic_skus_whose_ids_would_be_too_long_before_the_stack_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo renders with write_sku_folders once its stack is up: a too-long id was a ValueError
    # traceback there, after the start-up.
    from devstack.demo.demo import main as demo_main

    argv = ["--synthetic", "--synthetic-skus", str(10**60), "--workdir", str(tmp_path / "up")]
    with pytest.raises(SystemExit) as exited:
        demo_main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--synthetic-skus" in err and "at most 64" in err
    assert not (tmp_path / "up").exists()


@pytest.mark.parametrize("height", [0.0, -5.0, float("nan"), float("inf")])
def test_a_view_without_a_positive_finite_height_is_refused_naming_it(height: float) -> None:
    # Before, each shape failed its own way: a RuntimeWarning and NaN geometry (0), numpy's
    # "cannot do a non-empty take from an empty axes" (a can at -5), a 25-pixel box (-5), or
    # "cannot convert float NaN to integer"; a pouch at -5 drew nothing and said nothing.
    with pytest.raises(ValueError, match="height"):
        View(height=height)


def test_a_view_with_a_nan_angle_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="yaw"):
        View(height=100.0, yaw=float("nan"))
