"""Ingest review 45: photos as they come from phones, catalogues and DAMs, made with Pillow."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.ingest import ingest
from services.ingest.ingest import IngestError, ingest_path
from shared.config import load_settings
from shared.store import FileStore
from tests.support.bus import file_store_uri, isolated_settings

REPO = Path(__file__).resolve().parents[1]


def _sku(root: Path, folder: str, sku_id: str, *, seeds: tuple[int, ...] = ()) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(
        json.dumps({"sku_id": sku_id, "name": "Oat drink", "category": "carton"})
    )
    for seed in seeds:
        _picture(seed).save(path / f"IMG_{seed}.jpg")
    return path


def _picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth picture of a few colours, a different one for each seed."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(float)
    a, b, c = np.random.default_rng(seed).uniform(5, 30, 3)
    value = 128 + 60 * np.sin(x / a) + 60 * np.cos(y / b + x / c)
    return Image.fromarray(np.stack([value, value[::-1], 255 - value], -1).clip(0, 255).astype(np.uint8))


def test_a_photo_past_pillows_bomb_threshold_is_one_refusal_not_a_python_warning(tmp_path: Path) -> None:
    # A 90-megapixel scan (past PIL.Image.MAX_IMAGE_PIXELS, under twice it) printed Python's own
    # "PIL/Image.py:...: DecompressionBombWarning: ... could be decompression bomb DOS attack." and
    # "  warnings.warn(" before ingest's refusal: two lines of someone else's source, saying the
    # user's photo might be an attack. Ingest's refusal already names the size and the limit.
    folder = _sku(tmp_path, "scan", "SCAN-1")
    Image.new("1", (10_000, 9_000), 1).save(folder / "scan.png")  # a few kB, 90 MP
    run = subprocess.run(
        [sys.executable, "-m", "skuforge_cli", "ingest", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": ""},
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "too_many_pixels: 10000x9000 = 90000000 pixels" in run.stderr, run.stderr
    assert "Warning" not in run.stderr and "warnings.warn" not in run.stderr, run.stderr


def test_a_sku_id_differing_only_in_case_from_a_stored_sku_is_refused_before_any_upload(
    tmp_path: Path,
) -> None:
    # OATLY-001 was ingested last week; today's new photos came with "oatly-001" in metadata.json.
    # In one batch that is refused, but against the store it went through without a word: a second
    # class of the same product in every export (S3 keys are case-sensitive), or, in a FileStore on
    # macOS or Windows, its photos in OATLY-001's folder, under an event that names another SKU.
    store = FileStore(tmp_path / "store")
    store.put_bytes("incoming/OATLY-001/0123456789abcdef.png", b"an earlier photo", "image/png")
    folder = _sku(tmp_path / "batch", "oatly", "oatly-001", seeds=(1,))
    # No broker at all: the refusal comes before Kafka is reached, as the folders' own problems do.
    settings = isolated_settings("localhost:1", file_store_uri(tmp_path / "store"))
    with pytest.raises(IngestError) as refused:
        ingest_path(tmp_path / "batch", settings, store=store, warn=lambda _: None)
    assert (
        f"{folder}: sku_id 'oatly-001' differs only in case from 'OATLY-001', a SKU the store holds "
        "(incoming/OATLY-001/)"
    ) in str(refused.value), refused.value
    assert "nothing was ingested" in str(refused.value)
    assert sorted(store.list_keys("incoming/")) == ["incoming/OATLY-001/0123456789abcdef.png"]


def test_a_phone_photo_whose_exif_is_cut_short_is_still_stored_upright(tmp_path: Path) -> None:
    # A photo an editing app saved with its EXIF cut short (the camera model's text runs past the end
    # of the block): Pillow stops reading at that tag and never reaches Orientation, which comes after
    # it, though its entry is whole. The portrait photo was stored on its side without a word, and
    # every image generated from it was sideways.
    exif = Image.Exif()
    exif[0x010F] = "A phone maker"  # Make
    exif[0x0110] = "A phone model with a long name"  # Model: its text lies at the end of the block
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
    block = exif.tobytes()
    folder = _sku(tmp_path, "phone", "PHONE-1")
    landscape = _picture(1, (400, 300))
    landscape.save(folder / "IMG_1.jpg", exif=block[:-8], quality=95)
    with Image.open(folder / "IMG_1.jpg") as opened:
        assert 0x0112 not in opened.getexif(), "Pillow alone loses the orientation of this file"
    sku, problems = ingest.prepare_sku(folder, load_settings())
    assert sku is not None, problems
    photo = sku.photos[0]
    assert (photo.width, photo.height) == (300, 400)
    stored = np.asarray(Image.open(io.BytesIO(photo.png)).convert("RGB")).astype(int)
    upright = np.asarray(landscape.transpose(Image.Transpose.ROTATE_270)).astype(int)
    assert np.abs(stored - upright).mean() < 3, "turned clockwise, as its EXIF says"


def test_a_photo_with_a_broken_exif_block_prints_no_python_warning(tmp_path: Path) -> None:
    # The photo is taken (its pixels are whole; a broken EXIF block loses at most its orientation),
    # but ingest printed Pillow's "PIL/TiffImagePlugin.py:946: UserWarning: Tag data larger than
    # file. Skipping tag 271" and "  warnings.warn(...)" lines first: someone else's source, nothing
    # the user could act on, above what ingest itself had to say.
    exif = Image.Exif()
    exif[0x010F] = "A phone maker"
    exif[0x0110] = "A phone model with a long name"
    folder = _sku(tmp_path, "phone", "PHONE-1")
    _picture(1).save(folder / "IMG_1.jpg", exif=exif.tobytes()[:30])
    empty = _sku(tmp_path, "empty", "EMPTY-1")  # a refusal ends the run before Kafka is reached
    run = subprocess.run(
        [sys.executable, "-m", "skuforge_cli", "ingest", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": ""},
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert f"{empty}: no photos" in run.stderr and "IMG_1.jpg" not in run.stderr, run.stderr
    assert "Warning" not in run.stderr and "warnings.warn" not in run.stderr, run.stderr
