"""Review 46 of the model cache: file systems without hard links."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from shared.model_cache import fetch_file, release
from tests.support.model_cache import another_stage_installing_meanwhile, copies, publish


def _links_unsupported(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """This process's cache on a file system whose ``link`` fails with ``code``."""

    def refused(source: object, destination: object, **_: object) -> None:
        raise OSError(code, os.strerror(code), str(source))

    monkeypatch.setattr(os, "link", refused)


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS], ids=errno.errorcode.get)
def test_a_cache_whose_file_system_has_no_hard_links_gets_a_whole_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # Some FUSE file systems answer link() with ENOSYS: the fetch failed with "[Errno 38] Function not
    # implemented" instead of renaming its copy into place as on vfat (EPERM).
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish(store, "v1/model.onnx", b"version one")
    _links_unsupported(monkeypatch, code)
    copy = fetch_file(uri, cache, uri_from="the test")
    assert copy.read_bytes() == b"version one"
    assert copies(cache) == [copy.name]
    release(copy)


def test_without_hard_links_a_copy_landing_between_the_check_and_the_move_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback checked for a whole copy and then renamed its own over the name: another stage's copy
    # landing between the two was replaced under that stage, its lock left on a deleted file.
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish(store, "v1/model.onnx", b"version one")
    with another_stage_installing_meanwhile(monkeypatch, uri, cache) as other:
        _links_unsupported(monkeypatch, errno.EPERM)
        copy = fetch_file(uri, cache, uri_from="the test")
        assert copy.read_bytes() == b"version one"
        assert copy.stat().st_ino == other.their_copy(), (
            "the copy one of the stages holds is not the one named"
        )
        assert copies(cache) == [copy.name]
        release(copy)
