"""Refusals that named the fault but not what to do: a file given where ingest reads a folder, a
smallest photo side past the captioner's size."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings
from shared.photos import WORKING_SIDE_PX
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri


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
