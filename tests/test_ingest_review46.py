"""``skuforge ingest`` given a file where it reads a folder: a photo, or a SKU's metadata.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from services.ingest.ingest import IngestError, prepare_all
from shared.config import ConfigError, load_settings
from shared.photos import WORKING_SIDE_PX
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri


@pytest.mark.parametrize(
    ("argument", "said"),
    [
        (
            "A/photo.jpg",
            "A/photo.jpg: not a directory; it is a photo: ingest reads SKU folders (photos and a "
            "metadata.json): give the folder it is in",
        ),
        (
            "A/metadata.json",
            "A/metadata.json: not a directory; it is a SKU's metadata: give the folder it is in, A",
        ),
    ],
)
def test_a_photo_or_a_metadata_file_given_as_the_path_says_to_give_its_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argument: str,
    said: str,
) -> None:
    """A shell's tab completion of `skuforge ingest skus/A/` lands on a file: a photo or the SKU's
    metadata.json were told only "not a directory", which did not say that ingest wants the folder."""
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "A-1", "name": "Oat drink", "category": "carton"})
    )
    Image.new("RGB", (64, 64), (10, 40, 80)).save(folder / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "localhost:1")
    assert cli_main(["ingest", argument]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("sku_id", "said"),
    [
        ("ÄPFEL-1", "sku_id: id contains 'Ä' (character 1), which is not allowed: it may contain only"),
        ("Apple 1", "sku_id: id contains ' ' (character 6), which is not allowed: it may contain only"),
        ("-A1", "sku_id: id starts with '-': it must start with a letter or digit"),
    ],
)
def test_a_sku_id_with_a_character_ids_do_not_take_names_that_character(
    tmp_path: Path, sku_id: str, said: str
) -> None:
    """An sku_id of "ÄPFEL-1" was told that an id "may contain only letters, digits, '.', '_' and '-'":
    Ä is a letter, and the message named neither the character nor that only ASCII letters are meant."""
    folder = tmp_path / "A"
    folder.mkdir()
    metadata = {"sku_id": sku_id, "name": "Apples", "category": "fresh fruit"}
    (folder / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    Image.new("RGB", (64, 64), (10, 40, 80)).save(folder / "photo.png")
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    assert said in str(refused.value)
    assert "A-Z" in str(refused.value)


@pytest.mark.parametrize("name", ["photo.jpg ", "photo.png.", "photo.JPG  "])
def test_a_photo_whose_name_runs_on_past_its_extension_is_told_to_be_renamed(
    tmp_path: Path, name: str
) -> None:
    """A space or dot after the extension (a name pasted with a trailing space, on macOS or Linux) was
    told "not a photo ingest reads (.bmp, .jfif, ...); export it as JPEG or PNG" of a JPEG or PNG."""
    folder = tmp_path / "A"
    folder.mkdir()
    metadata = {"sku_id": "A-1", "name": "Oat drink", "category": "carton"}
    (folder / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    Image.new("RGB", (64, 64), (10, 40, 80)).save(folder / "other.png")
    Image.new("RGB", (64, 64), (90, 40, 80)).save(folder / name, "PNG")
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    said = str(refused.value)
    assert f"rename it {name.rstrip(' .')!r}" in said and "export it" not in said


def test_a_smallest_photo_side_over_the_captioners_working_size_is_refused_at_start_up() -> None:
    """SKUFORGE_MIN_PHOTO_SIDE_PX=3000 (meaning "only high-resolution photos") started, and then every
    photo was refused: one shorter than 3000 px as too small, and any other once its longer side is
    brought to the captioner's 2048 px, with the advice to crop it. No photo could pass."""
    with pytest.raises(ConfigError, match="SKUFORGE_MIN_PHOTO_SIDE_PX") as refused:
        load_settings(min_photo_side_px=WORKING_SIDE_PX + 1)
    assert str(WORKING_SIDE_PX) in str(refused.value)
    assert load_settings(min_photo_side_px=WORKING_SIDE_PX).min_photo_side_px == WORKING_SIDE_PX
