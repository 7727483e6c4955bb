"""Two stages fetching the same model file at once: the copy the first put in place, and holds, stays.

The other process runs for real (a Python child sharing the cache).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.model_cache import fetch_file, release
from tests.support.model_cache import (
    age,
    another_stage_fetching_meanwhile,
    copies,
    pruned_by_another_process,
    publish,
)


def test_a_copy_another_stage_put_in_place_during_this_download_is_used_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both found no copy and downloaded; the second replaced the first's copy by its own, so the first
    stage's lock was on a deleted file: once the second let its copy go, the copy the first still used
    was pruned after ``unused_days`` under it, and downloaded again at its next fetch."""
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish(store, "v1/model.onnx", b"version one")
    with another_stage_fetching_meanwhile(monkeypatch, uri, cache) as theirs:
        copy = fetch_file(uri, cache, uri_from="the test")
        assert copy.read_bytes() == b"version one"
        assert copy.stat().st_ino == theirs[0], "the copy the other stage holds was replaced under it"
        # This stage lets its copy go; the other still uses it, however old it looks.
        release(copy)
        age(copy)
        assert pruned_by_another_process(cache) == []
        assert copies(cache) == [copy.name]
