"""Refusals that named the fault but not what to do: a photo in a format ingest does not read under a
.jpg name, a file given where ingest reads a folder, a smallest photo side past the captioner's size."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from services.ingest.ingest import IngestError, prepare_all
from shared.config import ConfigError, load_settings
from shared.errors import ImageRejected
from shared.images import decode_image, decode_mask
from shared.photos import WORKING_SIDE_PX
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 30, 30)).save(out, "GIF")
    return out.getvalue()


def test_a_format_left_out_says_what_to_export_it_as() -> None:
    """A GIF was refused as "format GIF is not one of [...]": nothing said what would be read."""
    with pytest.raises(ImageRejected) as photo:
        decode_image(_gif())
    assert photo.value.reason == "format_not_allowed"
    assert "format GIF" in str(photo.value) and "export it as JPEG or PNG" in str(photo.value)
    with pytest.raises(ImageRejected) as mask:
        decode_mask(_gif())
    assert "export it as PNG" in str(mask.value) and "JPEG" not in str(mask.value).split(":", 2)[-1]


def test_a_gif_named_jpg_in_a_sku_folder_is_told_its_name_does_not_match_its_content(tmp_path: Path) -> None:
    """A GIF saved as photo.jpg: "format GIF is not one of [...]" left its owner looking at a .jpg,
    not knowing the name lies about what the file holds."""
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "A-1", "name": "Oat drink", "category": "carton"})
    )
    (folder / "photo.jpg").write_bytes(_gif())
    Image.new("RGB", (96, 96), (10, 40, 80)).save(folder / "other.png")
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    [said] = [line for line in str(refused.value).splitlines() if "photo.jpg" in line]
    assert "format GIF" in said and "export it as JPEG or PNG" in said
    assert "its name ends in .jpg, but it holds a GIF" in said


@pytest.mark.parametrize("name", ["A/notes.txt", "A/photo.gif", "A/readme"])
def test_any_other_file_given_as_the_path_is_told_to_give_the_skus_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    """A .txt, a .gif or any other file given as the path was told only "not a directory"."""
    folder = tmp_path / "A"
    folder.mkdir()
    (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "localhost:1")
    assert cli_main(["ingest", name]) == 2
    err = capsys.readouterr().err
    assert f"{name}: not a directory; it is a file: ingest reads SKU folders" in err
    assert "give the SKU's folder" in err and "Traceback" not in err


def test_a_smallest_photo_side_past_the_working_size_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """SKUFORGE_MIN_PHOTO_SIDE_PX=3000 was told pydantic's "less than or equal to 2048", not why 2048."""
    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", str(WORKING_SIDE_PX + 952))
    with pytest.raises(ConfigError) as refused:
        load_settings()
    said = str(refused.value)
    assert f"SKUFORGE_MIN_PHOTO_SIDE_PX: must be at most {WORKING_SIDE_PX}" in said
    assert f"the captioner brings a photo's longer side to {WORKING_SIDE_PX} px" in said
    assert "(got '3000')" in said
    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", "many")  # other faults are told as before
    with pytest.raises(ConfigError, match="SKUFORGE_MIN_PHOTO_SIDE_PX: Input should be a valid integer"):
        load_settings()
