"""Review 48 of the model cache: a copy that is not whole is read once to find it so, not twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from shared import model_cache
from shared.model_cache import fetch_directory, fetch_file, release
from tests.support.model_cache import BLIP_FILES, damaged_file_copy, damaged_folder_copy


def _hashes_counted(monkeypatch: pytest.MonkeyPatch) -> Counter[Path]:
    """How many times the cache reads each file whole for its sha256 from now on (by path)."""
    counted: Counter[Path] = Counter()
    file_sha256 = model_cache.file_sha256

    def counting(path: Path) -> str:
        counted[path] += 1
        return file_sha256(path)

    monkeypatch.setattr(model_cache, "file_sha256", counting)
    return counted


def test_a_file_copy_damaged_in_place_is_hashed_once_before_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found broken by its sha256 (a read of the whole model), it was read whole again just before the
    # new copy was put over it, though nothing had been put there since.
    cache, uri, copy = damaged_file_copy(tmp_path)
    counted = _hashes_counted(monkeypatch)

    assert fetch_file(uri, cache, uri_from="the test") == copy
    release(copy)
    assert copy.read_bytes() == b"weights " * 100
    assert counted == {copy: 1}


def test_a_folder_copy_damaged_in_place_is_hashed_once_before_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every file's sha256 up to the damaged one was read again before the new copy was swapped in.
    cache, uri, copy = damaged_folder_copy(tmp_path)
    counted = _hashes_counted(monkeypatch)

    assert fetch_directory(uri, cache, uri_from="the test") == copy
    release(copy)
    assert {key: (copy / key).read_bytes() for key in BLIP_FILES} == BLIP_FILES
    assert counted == {copy / "config.json": 1, copy / "model.safetensors": 1}
