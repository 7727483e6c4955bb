"""A new copy of a model folder takes the place of an outdated one without a moment with no model there,
never replaces a whole copy another process has just put there, no copy comes out world-writable, and
a copy is on disk, the names leading to it included, before it is used."""

from __future__ import annotations

import errno
import fcntl
import inspect
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared import model_cache
from shared.model_cache import fetch_directory, fetch_file
from tests.support.model_cache import BLIP_FILES, publish, publish_folder

# The folder republished under the same URI with one more file: the cached copy is outdated.
BLIP_FILES_V2 = {**BLIP_FILES, "processor/tokenizer.json": b'{"version": 2}'}


def _outdated_copy(tmp_path: Path) -> tuple[str, Path, Path]:
    """A model folder's URI, the cache, and the cache's copy of it, outdated by a republished file."""
    store, cache = tmp_path / "store", tmp_path / "cache"
    uri = publish_folder(store, "blip")
    copy = fetch_directory(uri, cache, uri_from="the test")
    publish_folder(store, "blip", BLIP_FILES_V2)
    return uri, cache, copy


def _holds(copy: Path, files: dict[str, bytes]) -> bool:
    return copy.is_dir() and all(
        (copy / key).is_file() and (copy / key).read_bytes() == data for key, data in files.items()
    )


def test_a_process_killed_while_it_removes_the_outdated_copy_leaves_a_whole_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The outdated copy was renamed aside and deleted before the new one took its name: killed in
    # between (a SIGKILL, an OOM kill, a pod evicted), the stage left no model at all under that name,
    # and every stage loading it meanwhile failed with FileNotFoundError.
    uri, cache, copy = _outdated_copy(tmp_path)
    seen_while_deleting: list[bool] = []

    def killed_while_deleting(path: object, *args: object, **kwargs: object) -> None:
        seen_while_deleting.append(_holds(copy, BLIP_FILES) or _holds(copy, BLIP_FILES_V2))
        raise KeyboardInterrupt  # stands for the kill: nothing after it runs

    monkeypatch.setattr(model_cache.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        fetch_directory(uri, cache, uri_from="the test")

    assert seen_while_deleting, "the outdated copy was never deleted"
    assert all(seen_while_deleting), "no whole model under the copy's name while the old one was deleted"
    assert _holds(copy, BLIP_FILES_V2)


def test_where_names_cannot_be_exchanged_the_new_copy_still_replaces_the_outdated_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # renameat2's RENAME_EXCHANGE is refused (EINVAL) by some file systems (NFS) and older kernels.
    uri, cache, copy = _outdated_copy(tmp_path)
    monkeypatch.setattr(model_cache, "_RENAME_EXCHANGE", 1 << 30)  # a flag no kernel knows: EINVAL

    assert fetch_directory(uri, cache, uri_from="the test") == copy
    assert _holds(copy, BLIP_FILES_V2)
    assert [name for name in os.listdir(cache) if name.startswith(".")] == []


def test_a_copy_another_process_installs_meanwhile_is_kept_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between finding the cached copy outdated and renaming it aside, another stage installed a whole new
    # copy and began loading it: that fresh copy was renamed aside and deleted under it.
    uri, cache, copy = _outdated_copy(tmp_path)
    install_lock = model_cache._install_lock
    other_stage_got: list[int] = []
    main_thread = threading.current_thread()

    def other_stage() -> None:
        fetch_directory(uri, cache, uri_from="the test")
        other_stage_got.append(copy.stat().st_ino)

    @contextmanager
    def other_stage_installs_meanwhile(folder: Path) -> Iterator[None]:
        # This stage has found the copy there outdated and not yet taken the install lock to replace it
        # (it holds no lock the other stage waits for): the other stage's whole fetch runs here, first.
        installing_now = any(frame.function == "_install" for frame in inspect.stack())
        if threading.current_thread() is main_thread and installing_now and not installs:
            installs.append(threading.Thread(target=other_stage))
            installs[0].start()
            installs[0].join()
        with install_lock(folder):
            yield

    installs: list[threading.Thread] = []
    monkeypatch.setattr(model_cache, "_install_lock", other_stage_installs_meanwhile)
    fetch_directory(uri, cache, uri_from="the test")

    assert installs and other_stage_got, "the other stage never ran"
    assert copy.stat().st_ino == other_stage_got[0], "the copy the other stage got was replaced under it"
    assert _holds(copy, BLIP_FILES_V2)
    assert [name for name in os.listdir(cache) if name.startswith(".")] == []


def test_under_a_permissive_umask_no_cached_file_or_folder_is_world_writable(tmp_path: Path) -> None:
    # The copies took the process's umask as it was: under umask 000 (some containers, a careless
    # shell) every model file was 0666 and every folder 0777, so any local user could change the
    # weights a stage loads, and loading weights can run code.
    store, cache = tmp_path / "store", tmp_path / "cache"
    file_uri = publish(store, "u2netp.onnx", b"weights " * 100)
    folder_uri = publish_folder(store, "blip", BLIP_FILES_V2)
    previous = os.umask(0)
    try:
        fetch_file(file_uri, cache, uri_from="the test")
        fetch_directory(folder_uri, cache, uri_from="the test")
    finally:
        os.umask(previous)

    paths = [cache, *cache.rglob("*")]
    assert len(paths) > 5
    modes = {str(path): stat.filemode(path.stat().st_mode) for path in paths}
    assert {path: mode for path, mode in modes.items() if mode[-2] == "w"} == {}


def test_the_cache_reads_the_umask_without_changing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was read by setting it to 022 and back: a thread of the same stage creating a file in between
    # (stages fetch models and write files from several threads) got 022, not the umask it runs under.
    store, cache = tmp_path / "store", tmp_path / "cache"
    uri = publish(store, "u2netp.onnx", b"weights " * 100)
    umask = os.umask

    def umask_changed(mask: int) -> int:
        raise AssertionError(f"the process's umask was set to {mask:03o}")

    previous = umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", umask_changed)
        copy = fetch_file(uri, cache, uri_from="the test")
        monkeypatch.undo()
    finally:
        umask(previous)

    assert stat.S_IMODE(copy.stat().st_mode) == 0o640


def test_where_the_install_lock_cannot_be_taken_the_copy_is_still_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NFS emulates flock with POSIX locks: an exclusive one on a read-only descriptor is EBADF there.
    uri, cache, copy = _outdated_copy(tmp_path)
    flock = fcntl.flock

    def nfs_flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    assert fetch_directory(uri, cache, uri_from="the test") == copy
    assert _holds(copy, BLIP_FILES_V2)


def test_under_a_permissive_umask_the_folders_a_written_file_needs_are_not_world_writable(
    tmp_path: Path,
) -> None:
    # write_atomically made the missing folders with the umask as it was: an adapter's weights went into
    # a cache folder everyone could write to (lora-<sha256>/, 0777 under umask 000).
    weights = tmp_path / "cache" / "lora-0123456789abcdef" / "adapter_model.safetensors"
    previous = os.umask(0)
    try:
        model_cache.write_atomically(weights, b"weights")
    finally:
        os.umask(previous)

    modes = {str(path): stat.filemode(path.stat().st_mode) for path in (weights, *weights.parents)}
    made = {path: mode for path, mode in modes.items() if tmp_path in Path(path).parents}
    assert len(made) == 3
    assert {path: mode for path, mode in made.items() if mode[-2] == "w"} == {}


def _inode(path: Path) -> str:
    return str(path.stat().st_ino)


def _recording_fsyncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record, in order, each fsync (of a 'file' or 'folder', by inode) and each rename into place."""
    events: list[tuple[str, str]] = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def recording_fsync(fd: int) -> None:
        status = os.fstat(fd)
        events.append(("fsync " + ("folder" if stat.S_ISDIR(status.st_mode) else "file"), str(status.st_ino)))
        fsync(fd)

    def recording_rename(source: str | Path, target: str | Path) -> None:
        events.append(("rename", str(os.stat(source).st_ino)))
        rename(source, target)

    def recording_replace(source: str | Path, target: str | Path) -> None:
        events.append(("rename", str(os.stat(source).st_ino)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording_rename)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events


def test_a_written_file_and_its_name_reach_the_disk_before_it_is_relied_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rename was never fsynced in its folder: after a power cut the name could be the old file, or
    # none, though the writer (a trained model, an adapter's weights) had returned.
    weights = tmp_path / "cache" / "lora-0123456789abcdef" / "adapter_model.safetensors"
    events = _recording_fsyncs_and_renames(monkeypatch)

    model_cache.write_atomically(weights, b"weights")

    assert events == [
        ("fsync folder", _inode(tmp_path)),  # the cache folder made there
        ("fsync folder", _inode(tmp_path / "cache")),  # the adapter's folder made there
        ("fsync file", _inode(weights)),
        ("rename", _inode(weights)),
        ("fsync folder", _inode(weights.parent)),
    ]


def test_a_copied_folder_and_its_name_reach_the_disk_before_it_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its files were fsynced, but not the folders naming them, nor the cache folder after the rename:
    # after a power cut the copy could lack a file its marker lists, or be missing.
    files = {"model_index.json": b"{}", "unet/weights.bin": b"w"}
    uri = publish_folder(tmp_path / "store", "pipeline", files)
    cache = tmp_path / "cache"
    events = _recording_fsyncs_and_renames(monkeypatch)

    copy = fetch_directory(uri, cache, uri_from="the test")

    renamed = events.index(("rename", _inode(copy)))
    before, after = events[:renamed], events[renamed + 1 :]
    for name in (*files, model_cache.COMPLETE_MARKER):
        path = copy / name
        assert ("fsync file", _inode(path)) in before, path
    assert before.index(("fsync folder", _inode(copy / "unet"))) > before.index(
        ("fsync file", _inode(copy / "unet" / "weights.bin"))
    )
    assert before[-1] == ("fsync folder", _inode(copy)), "the copy's own entries were not synced last"
    assert after == [("fsync folder", _inode(cache))]


def test_a_partial_file_put_in_place_leaves_its_old_name_to_whoever_takes_it(tmp_path: Path) -> None:
    # The partial file's name was deleted when the copy ended, whatever it named by then: once ours
    # was renamed into place, a file another process had since made under that name.
    with model_cache._partial_file(tmp_path) as partial:
        partial.write_bytes(b"ours")
        model_cache._put_in_place(partial, tmp_path / "model.onnx")
        partial.write_bytes(b"another process's download")

    assert (tmp_path / "model.onnx").read_bytes() == b"ours"
    assert partial.read_bytes() == b"another process's download"

    with model_cache._partial_file(tmp_path) as abandoned:
        abandoned.write_bytes(b"half a model")
    assert not abandoned.exists(), "a partial file never put in place is deleted"
