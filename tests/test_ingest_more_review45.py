"""Ingest review 45, more: what a refusal says of a photo decoded scaled down, photos a DAM exported
with an empty title, and 16-bit photos that are dark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from services.ingest.ingest import IngestError, prepare_all
from shared.config import load_settings
from shared.photos import is_left_out_quietly, photo_suffix


def _sku(root: Path, folder: str, sku_id: str) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(
        json.dumps({"sku_id": sku_id, "name": "Oat drink", "category": "carton"})
    )
    return path


def test_a_too_small_photo_decoded_scaled_down_is_named_by_its_files_own_size(tmp_path: Path) -> None:
    # A JPEG over SKUFORGE_MAX_IMAGE_PIXELS is decoded at 1/2 (or 1/4, 1/8) of its size; its too_small
    # refusal gave that decoded size ("2000x55 px" for a 4000x110 file), a size its owner finds nowhere
    # in the file's properties.
    folder = _sku(tmp_path, "strip", "STRIP-1")
    Image.new("RGB", (4000, 110), (30, 200, 30)).save(folder / "strip.jpg", "JPEG")
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings(max_image_pixels=200_000))
    message = str(refused.value)
    assert f"{folder / 'strip.jpg'}: refused (too_small: 4000x110 px" in message, message
    assert "2000x55" in message, "the size it was decoded at, said as that"


def test_a_sku_id_ending_in_a_dot_is_refused_at_ingest(tmp_path: Path) -> None:
    # Windows drops a trailing dot from a file or folder name: "ABC-1." and "ABC-1" were one store
    # folder there (a FileStore on Windows or a share, an export), as ids differing only in case were;
    # and "ABC-1." alone was written into "ABC-1". Ingest took it.
    folder = _sku(tmp_path, "dotted", "ABC-1.")
    Image.new("RGB", (64, 64), (30, 200, 30)).save(folder / "photo.png")
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    message = str(refused.value)
    assert f"{folder / 'metadata.json'}: sku_id: 'ABC-1.' ends with '.'" in message, message
    assert "Windows" in message, message


def test_a_photo_named_only_by_its_extension_is_taken_not_skipped_as_hidden(tmp_path: Path) -> None:
    # A DAM exports a photo with an empty title as ".jpg" (or "..png", the title's dot kept): the
    # hidden-file rule skipped it without a word, a SKU a photo short. A hidden file that is not a
    # photo's extension alone (".DS_Store", macOS's "._IMG_1.jpg") is still left out quietly.
    folder = _sku(tmp_path, "dam", "DAM-1")
    Image.new("RGB", (64, 64), (30, 200, 30)).save(folder / ".jpg", "JPEG")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "..png", "PNG")
    (folder / "._IMG_1.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    [sku] = prepare_all(tmp_path, load_settings())
    assert sorted(photo.original_filename for photo in sku.photos) == ["..png", ".jpg"]


def test_every_reader_reads_such_a_name_as_a_photo_and_macos_forks_as_hidden() -> None:
    assert [photo_suffix(name) for name in (".jpg", "..PNG", "a.jpeg", ".heic", "._a.tif")] == [
        ".jpg",
        ".png",
        ".jpeg",
        ".heic",
        ".tif",
    ]
    assert photo_suffix(".DS_Store") == "" and photo_suffix("README") == ""
    assert not is_left_out_quietly(".jpg") and not is_left_out_quietly("..png")
    assert is_left_out_quietly("._IMG_1.jpg") and is_left_out_quietly(".DS_Store")
