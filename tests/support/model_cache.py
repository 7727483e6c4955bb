"""The model cache's tests' arrangements: models published in a ``file://`` store, and another stage
sharing the cache for real (a Python child that fetches, says 'ready', and keeps its copy until told)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared import model_cache

REPO = Path(__file__).resolve().parents[2]
FORTY_DAYS_S = 40 * 86_400
# A save_pretrained folder's files, as BLIP's: the loader reads them by name.
BLIP_FILES = {"config.json": b'{"model_type": "blip"}', "model.safetensors": b"weights " * 100}


def publish(store: Path, name: str, data: bytes) -> str:
    """Put ``data`` at ``name`` in the folder store ``store``; returns its ``file://`` URI."""
    path = store / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri()


def publish_folder(store: Path, name: str, files: dict[str, bytes] = BLIP_FILES) -> str:
    """Put a model folder ``name`` holding ``files`` (key -> bytes) in ``store``; returns its URI."""
    for key, data in files.items():
        publish(store / name, key, data)
    return (store / name).as_uri()


def damaged_file_copy(tmp_path: Path) -> tuple[Path, str, Path]:
    """A model file (``b"weights " * 100``) published in a store under ``tmp_path``, fetched into the
    cache ``tmp_path / "cache"``, let go, then damaged in place (same size, other bytes): (cache, its
    URI, the copy)."""
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish(store, "v1/model.onnx", b"weights " * 100)
    copy = model_cache.fetch_file(uri, cache, uri_from="the test")
    model_cache.release(copy)
    copy.write_bytes(b"damaged " * 100)  # same size, other bytes
    return cache, uri, copy


def damaged_folder_copy(tmp_path: Path) -> tuple[Path, str, Path]:
    """A model folder (``BLIP_FILES``) published in a store under ``tmp_path``, fetched into the cache
    ``tmp_path / "cache"``, let go, then its weights damaged in place (same size, other bytes): (cache,
    its URI, the copy)."""
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish_folder(store, "blip")
    copy = model_cache.fetch_directory(uri, cache, uri_from="the test")
    model_cache.release(copy)
    (copy / "model.safetensors").write_bytes(b"damaged " * 100)  # same size, other bytes
    return cache, uri, copy


def child(script: str) -> subprocess.Popen[str]:
    """A Python process in the repo that prints 'ready' once it has done its part, then waits for a line."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def fetching_child(uri: str, cache: Path) -> subprocess.Popen[str]:
    """Another stage that has fetched the file ``uri`` into ``cache`` (ready) and holds it until told."""
    process = child(f"""
        from shared.model_cache import fetch_file
        fetch_file({uri!r}, {str(cache)!r}, uri_from="the test")
        print("ready", flush=True)
        input()
    """)
    wait_ready(process)
    return process


def wait_ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"


def finish(process: subprocess.Popen[str]) -> None:
    process.communicate("go\n", timeout=60)
    assert process.returncode == 0


def age(path: Path) -> None:
    """Make ``path`` look last used forty days ago."""
    old = time.time() - FORTY_DAYS_S
    os.utime(path, (old, old))


def copies(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir())


def pruned_by_another_process(cache: Path, unused_days: float = 30) -> list[str]:
    """What ``prune_unused`` run by another process on ``cache`` deleted (the entries' names)."""
    script = f"from shared.model_cache import prune_unused as p\nprint(*p({str(cache)!r}, {unused_days}))"
    pruner = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return pruner.stdout.split()


@contextmanager
def another_stage_fetching_meanwhile(
    monkeypatch: pytest.MonkeyPatch, uri: str, cache: Path
) -> Iterator[list[int]]:
    """Within the block, this process's first download of ``uri`` finds no copy, and another stage's
    fetch (a real child process) puts its whole copy in place before this one puts its own; the list
    yielded gets that copy's inode. The other stage lets its copy go as the block ends."""
    others: list[subprocess.Popen[str]] = []
    theirs: list[int] = []
    fetch = model_cache.copied_and_held

    def raced(target: Path, *, whole: Callable[[], bool], copy: Callable[[], None]) -> None:
        def whole_then_another_stage_fetches() -> bool:
            answer = whole()
            if not others:  # this download found no copy; another stage's fetch lands before it is put
                others.append(fetching_child(uri, cache))
                theirs.append(os.stat(target).st_ino)
            return answer

        fetch(target, whole=whole_then_another_stage_fetches, copy=copy)

    monkeypatch.setattr(model_cache, "copied_and_held", raced)
    try:
        yield theirs
    finally:
        for other in others:
            finish(other)


class AnotherStage:
    """Another stage's fetch started while this process put its own copy in place (``their_copy``)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self._inode: int | None = None

    def their_copy(self) -> int:
        """The inode of the copy the other stage holds once its fetch is done (waited for)."""
        if self._inode is None:
            assert self.process is not None and self.process.stdout is not None, (
                "the other stage never started"
            )
            self._inode = int(self.process.stdout.readline())
            wait_ready(self.process)
        return self._inode


@contextmanager
def another_stage_installing_meanwhile(
    monkeypatch: pytest.MonkeyPatch, uri: str, cache: Path
) -> Iterator[AnotherStage]:
    """Within the block, another stage (a real child process) starts fetching ``uri`` into ``cache`` just
    after this process's first put-in-place found no whole copy at its name and before it moves its own
    there. The other stage does as a stage does: where this one holds the cache's install lock (an
    exclusive ``flock`` on the cache folder) it waits for it, else its copy lands at once. The other
    stage lets its copy go as the block ends."""
    stage = AnotherStage()
    put_in_place = model_cache._put_in_place

    def raced(partial: Path, path: Path, *, whole: Callable[[], bool] | None = None) -> None:
        if whole is None:
            return put_in_place(partial, path)

        def whole_then_another_stage_installs() -> bool:
            answer = whole()
            if stage.process is None:
                stage.process = _inode_reporting_child(uri, cache)
                if _install_lock_free(cache):
                    stage.their_copy()  # nothing keeps it from landing now: it does
            return answer

        return put_in_place(partial, path, whole=whole_then_another_stage_installs)

    monkeypatch.setattr(model_cache, "_put_in_place", raced)
    try:
        yield stage
    finally:
        if stage.process is not None:
            finish(stage.process)


def _inode_reporting_child(uri: str, cache: Path) -> subprocess.Popen[str]:
    """Another stage fetching ``uri`` into ``cache``: prints the inode of the copy it holds, then
    'ready', and holds it until told."""
    return child(f"""
        import os
        from shared.model_cache import fetch_file
        copy = fetch_file({uri!r}, {str(cache)!r}, uri_from="the test")
        print(os.stat(copy).st_ino, flush=True)
        print("ready", flush=True)
        input()
    """)


def _install_lock_free(cache: Path) -> bool:
    """Whether another process could take the cache's install lock now."""
    fd = os.open(cache, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it where it was taken
    return True
