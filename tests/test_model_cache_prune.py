"""The model cache deletes the copies nobody used for a while, never one a running process uses or writes.

Processes share the cache, so each case runs the other process for real (a Python child).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shared import model_cache
from shared.config import ConfigError, load_settings
from shared.model_cache import fetch_directory, fetch_file

REPO = Path(__file__).resolve().parents[1]
FORTY_DAYS_S = 40 * 86_400


def _publish(store: Path, name: str, data: bytes) -> str:
    path = store / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri()


def _child(script: str) -> subprocess.Popen[str]:
    """A Python process in the repo that prints 'ready' once it has done its part, then waits for a line."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"


def _finish(child: subprocess.Popen[str]) -> None:
    child.communicate("go\n", timeout=60)
    assert child.returncode == 0


def _age(path: Path) -> None:
    old = time.time() - FORTY_DAYS_S
    os.utime(path, (old, old))


def _copies(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


def test_a_version_nobody_used_for_weeks_is_deleted_at_the_next_fetch(tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    v1 = _publish(store, "v1/model.onnx", b"version one")
    v2 = _publish(store, "v2/model.onnx", b"version two")
    # Another stage fetched v1 weeks ago, and has exited since.
    child = _child(f"""
        from shared.model_cache import fetch_file
        fetch_file({v1!r}, {str(cache)!r})
        print("ready", flush=True)
        input()
    """)
    _wait_ready(child)
    _finish(child)
    (old_copy,) = cache.iterdir()
    _age(old_copy)

    new_copy = fetch_file(v2, cache)

    assert _copies(cache) == [new_copy.name], "the copy of v1 nobody used for 40 days is still on disk"
    assert new_copy.read_bytes() == b"version two"


def test_a_copy_a_running_process_uses_is_kept_however_old(tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    v1 = _publish(store, "v1/model.onnx", b"version one")
    v2 = _publish(store, "v2/model.onnx", b"version two")
    # A long-lived stage loaded v1 forty days ago and still runs.
    child = _child(f"""
        from shared.model_cache import fetch_file
        fetch_file({v1!r}, {str(cache)!r})
        print("ready", flush=True)
        input()
    """)
    try:
        _wait_ready(child)
        (in_use,) = cache.iterdir()
        _age(in_use)
        new_copy = fetch_file(v2, cache)
        assert _copies(cache) == sorted([in_use.name, new_copy.name])
        assert in_use.read_bytes() == b"version one"
    finally:
        _finish(child)
    # Once that stage is gone, the next fetch deletes the copy.
    fetch_file(v2, cache)
    assert _copies(cache) == [new_copy.name]


def test_a_download_in_progress_is_kept_and_one_a_crash_left_is_deleted(tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    _publish(store, "blip/config.json", b"{}")
    _publish(store, "blip/weights.bin", b"w" * 1000)
    folder = (store / "blip").as_uri()
    crashed = cache / ".partial-crashed"
    (crashed / "sub").mkdir(parents=True)
    (crashed / "sub" / "weights.bin").write_bytes(b"half")
    _age(crashed)
    # Another process is in the middle of copying the folder: it stops after its first file.
    child = _child(f"""
        import shared.model_cache as model_cache
        write = model_cache._write_durably
        def slow_write(path, data):
            write(path, data)
            model_cache._write_durably = write
            print("ready", flush=True)
            input()
        model_cache._write_durably = slow_write
        model_cache.fetch_directory({folder!r}, {str(cache)!r})
    """)
    try:
        _wait_ready(child)
        (downloading,) = (p for p in cache.iterdir() if p.name.startswith(".partial-") and p != crashed)
        _age(downloading)
        pruned = model_cache.prune_unused(cache, 30)
        assert pruned == [crashed.name]
        assert downloading.is_dir()
    finally:
        _finish(child)
    copy = fetch_directory(folder, cache)
    assert (copy / "weights.bin").read_bytes() == b"w" * 1000
    assert _copies(cache) == [copy.name]


def test_zero_keeps_every_copy(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = cache / "0123456789abcdef-model.onnx"
    old.parent.mkdir()
    old.write_bytes(b"old")
    _age(old)
    assert model_cache.prune_unused(cache, 0) == []
    assert old.is_file()


def test_a_fraction_of_a_day_is_refused_at_start_up() -> None:
    # Minutes would count a slow download as unused.
    with pytest.raises(ConfigError, match="SKUFORGE_MODEL_CACHE_UNUSED_DAYS"):
        load_settings(model_cache_unused_days=0.01)
    assert load_settings(model_cache_unused_days=0).model_cache_unused_days == 0
