"""A folder copied into the model cache is reused only while its files hold the bytes that were copied."""

from __future__ import annotations

from pathlib import Path

from shared.model_cache import fetch_directory
from tests.support.model_cache import BLIP_FILES, publish_folder


def test_a_folder_copy_damaged_in_place_at_the_same_size_is_copied_again(tmp_path: Path) -> None:
    uri, cache = publish_folder(tmp_path / "store", "blip"), tmp_path / "cache"
    copy = fetch_directory(uri, cache, uri_from="the test")
    # A bit flipped on disk, a write lost in a crash, a file another user of a shared cache replaced:
    # the size is the same, the bytes are not, and the loader failed (or loaded them) at every start.
    damaged = copy / "model.safetensors"
    damaged.write_bytes(b"\0" * damaged.stat().st_size)

    again = fetch_directory(uri, cache, uri_from="the test")

    assert {key: (again / key).read_bytes() for key in BLIP_FILES} == BLIP_FILES
