"""Ingest review 45, more: what a refusal says of a photo decoded scaled down, photos a DAM exported
with an empty title, and 16-bit photos that are dark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from services.ingest.ingest import IngestError, prepare_all
from shared.config import load_settings


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
