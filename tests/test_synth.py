"""The synthetic photo renderer: determinism, exact masks, colour ground truth, folder layout."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.common import SkuMetadata, check_safe_id
from shared.arith.colour import srgb_to_lab
from shared.synth import (
    BACKGROUNDS,
    COLOUR_NAMES,
    PALETTE,
    PATTERNS,
    SHAPES,
    blank_photo,
    lab_distance,
    make_product,
    render_dataset,
    render_photo,
    write_sku_folders,
)
from shared.synth.backgrounds import GROUNDED
from skuforge_cli.synth import main as synth_main

SIZE = 160  # small photos keep the suite fast; geometry does not depend on size


def test_same_arguments_give_byte_identical_png() -> None:
    spec = make_product(4, seed=21)
    first = render_photo(spec, 2, seed=21, size_px=SIZE)
    second = render_photo(make_product(4, seed=21), 2, seed=21, size_px=SIZE)
    assert first.png() == second.png()
    assert first.mask_png() == second.mask_png()
    assert first.metadata == second.metadata
    other = render_photo(spec, 3, seed=21, size_px=SIZE)
    assert other.png() != first.png()


def test_products_are_deterministic_and_vary() -> None:
    assert make_product(7, 3) == make_product(7, 3)
    specs = [make_product(i, 3) for i in range(50)]
    assert {s.shape for s in specs} == set(SHAPES)
    assert {s.pattern for s in specs} <= set(PATTERNS)
    assert len({s.main_colour for s in specs}) >= 8
    assert all(s.main_colour in COLOUR_NAMES and s.secondary_colour in COLOUR_NAMES for s in specs)
    assert all(s.main_colour != s.secondary_colour for s in specs)
    assert all(s.main_rgb in PALETTE[s.main_colour] for s in specs)
    series = Counter(s.series for s in specs)
    assert max(series.values()) >= 2, "several SKUs share a series"
    for s in specs:
        assert check_safe_id(s.sku_id) == s.sku_id
        assert s.series.startswith(s.brand + " ")
        SkuMetadata.model_validate(s.metadata())
    assert specs[0].sku_id == "SYN-3-0001"


def test_mask_is_binary_and_covers_a_sane_part_of_the_frame() -> None:
    for i in range(12):
        photo = render_photo(make_product(i, 5), i % 3, seed=5, size_px=SIZE)
        mask = photo.mask
        assert photo.image.size == (SIZE, SIZE) and photo.image.mode == "RGB"
        assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask)) <= {0, 255}
        fraction = float((mask > 0).mean())
        assert 0.05 <= fraction <= 0.70, (i, fraction)
        x0, y0, x1, y1 = photo.metadata["bbox"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        # The product is one solid blob: its bounding box is mostly filled.
        assert (mask[y0:y1, x0:x1] > 0).mean() > 0.6


def test_every_background_kind_renders() -> None:
    spec = make_product(0, 8)
    masks = []
    for kind in BACKGROUNDS:
        photo = render_photo(spec, 1, seed=8, size_px=SIZE, background=kind)
        assert photo.metadata["background"] == kind
        masks.append(photo.mask)
    # The backdrop never moves the product.
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


def test_shelf_draws_other_products_behind_not_in_the_mask() -> None:
    spec = make_product(1, 9)
    shelf = render_photo(spec, 0, seed=9, size_px=SIZE, background="shelf", shadow=False)
    assert shelf.metadata["distractors"] >= 1
    plain = render_photo(spec, 0, seed=9, size_px=SIZE, background="gradient", shadow=False)
    assert np.array_equal(shelf.mask, plain.mask)


def test_shadow_darkens_the_backdrop_but_is_not_in_the_mask() -> None:
    spec = make_product(2, 13)
    kind = next(iter(sorted(GROUNDED)))
    with_shadow = render_photo(spec, 0, seed=13, size_px=SIZE, background=kind, shadow=True)
    without = render_photo(spec, 0, seed=13, size_px=SIZE, background=kind, shadow=False)
    assert with_shadow.metadata["shadow"] == "cast" and without.metadata["shadow"] == "none"
    # Mask area equals the product layer's area whatever the shadow does.
    assert np.array_equal(with_shadow.mask, without.mask)
    a = np.asarray(with_shadow.image, dtype=np.int16)
    b = np.asarray(without.image, dtype=np.int16)
    darker = (b - a).sum(axis=2) > 15
    inside = with_shadow.mask > 0
    assert (darker & ~inside).sum() > 20, "a visible shadow outside the product"
    # Inside the product (away from its anti-aliased rim) the pixels are untouched.
    core = inside.copy()
    for axis in (0, 1):
        for shift in (1, -1):
            core &= np.roll(inside, shift, axis=axis)
    assert not (darker & core).any()


def test_main_colour_dominates_the_product_pixels() -> None:
    centres = srgb_to_lab(np.array([PALETTE[n][0] for n in COLOUR_NAMES]))
    for i in range(20):
        spec = make_product(i, 17)
        photo = render_photo(spec, i % 4, seed=17, size_px=SIZE)
        lab = srgb_to_lab(np.asarray(photo.image)[photo.mask > 0])
        # Lightness counts half (CMC 2:1): shading changes lightness, not the colour's name.
        near = lab_distance(lab, srgb_to_lab(np.array(spec.main_rgb))[None, :], lightness_weight=2.0) < 25.0
        assert near.mean() >= 0.4, (spec.sku_id, spec.shape, spec.main_colour, float(near.mean()))
        votes = np.argmin(lab_distance(lab[:, None, :], centres[None, :, :], 2.0), axis=1)
        plurality = COLOUR_NAMES[int(np.bincount(votes, minlength=len(COLOUR_NAMES)).argmax())]
        assert plurality == spec.main_colour, (spec.sku_id, plurality, spec.main_colour)


def test_render_dataset_yields_different_products() -> None:
    photos = list(render_dataset(6, seed=4, size_px=96))
    assert len(photos) == 6
    assert len({p.metadata["sku_id"] for p in photos}) == 6
    assert all(p.image.size == (96, 96) for p in photos)


def test_blank_photo_is_uniform() -> None:
    img = blank_photo(64, "grey")
    assert img.size == (64, 64) and img.mode == "RGB"
    assert np.array_equal(np.unique(np.asarray(img).reshape(-1, 3), axis=0), [PALETTE["grey"][0]])
    assert np.array_equal(
        np.unique(np.asarray(blank_photo(32, (1, 2, 3))).reshape(-1, 3), axis=0), [(1, 2, 3)]
    )


def test_write_sku_folders_layout(tmp_path: Path) -> None:
    folders = write_sku_folders(tmp_path, skus=2, photos_per_sku=2, seed=6, size_px=96)
    assert [f.name for f in folders] == ["SYN-6-0001", "SYN-6-0002"]
    for folder in folders:
        assert folder.parent == tmp_path / "skus"
        meta = json.loads((folder / "metadata.json").read_text())
        assert set(meta) == set(SkuMetadata.model_fields)
        assert SkuMetadata.model_validate(meta).sku_id == folder.name
        assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "photo_01.png", "photo_02.png"]
        for name in ("photo_01.png", "photo_02.png"):
            with (
                Image.open(folder / name) as photo,
                Image.open(tmp_path / "masks" / folder.name / name) as mask,
            ):
                assert photo.mode == "RGB" and photo.size == (96, 96)
                assert mask.mode == "L" and mask.size == (96, 96)
                assert set(np.unique(np.asarray(mask))) == {0, 255}
    lines = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert (tmp_path / line["photo"]).is_file() and (tmp_path / line["mask"]).is_file()
        spec = make_product(int(line["sku_id"].rsplit("-", 1)[1]) - 1, 6)
        assert (line["shape"], line["main_colour"], line["secondary_colour"]) == (
            spec.shape,
            spec.main_colour,
            spec.secondary_colour,
        )
        assert line["background"] in BACKGROUNDS
    # Same arguments, same bytes; a rerun with fewer photos leaves no stale ones behind.
    first = (folders[0] / "photo_02.png").read_bytes()
    write_sku_folders(tmp_path / "again", skus=2, photos_per_sku=2, seed=6, size_px=96)
    assert (tmp_path / "again" / "skus" / "SYN-6-0001" / "photo_02.png").read_bytes() == first
    write_sku_folders(tmp_path, skus=2, photos_per_sku=1, seed=6, size_px=96)
    assert not (folders[0] / "photo_02.png").exists()


def test_cli_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = synth_main(
        ["--out", str(tmp_path), "--skus", "1", "--photos-per-sku", "1", "--seed", "2", "--size", "64"]
    )
    assert code == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "1 photos of 1 SKUs" in out
    assert (tmp_path / "skus" / "SYN-2-0001" / "photo_01.png").is_file()
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path), "--skus", "0", "--photos-per-sku", "1", "--seed", "2"])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        make_product(-1, 0)
    with pytest.raises(ValueError):
        render_photo(make_product(0, 0), 0, 0, size_px=16)
    with pytest.raises(ValueError):
        render_photo(make_product(0, 0), 0, 0, size_px=SIZE, background="moon")


def test_cli_names_a_file_in_the_way_of_out_instead_of_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_the_way = tmp_path / "catalogue"
    in_the_way.write_text("mine\n")
    for out in (in_the_way, in_the_way / "sub"):
        argv = ["--out", str(out), "--skus", "1", "--photos-per-sku", "1", "--seed", "2", "--size", "64"]
        assert synth_main(argv) == 2
        err = capsys.readouterr().err
        assert f"skuforge synth: cannot write under --out {out}" in err and "Not a directory" in err
    assert in_the_way.read_text() == "mine\n"
