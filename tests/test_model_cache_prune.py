"""The model cache deletes the copies nobody used for a while, never one a running process uses or writes.

Processes share the cache, so each case runs the other process for real (a Python child).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from shared import model_cache
from shared.config import ConfigError, load_settings
from shared.generation import adapters
from shared.generation.adapters import AdapterRegistry
from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
from shared.model_cache import fetch_directory, fetch_file, open_cache, release
from shared.store import FileStore
from tests.support.adapters import RecordingPipe
from tests.support.lora import lora_weights
from tests.support.model_cache import (
    age,
    child,
    copies,
    fetching_child,
    finish,
    pruned_by_another_process,
    publish,
    publish_folder,
    wait_ready,
)


def test_a_version_nobody_used_for_weeks_is_deleted_at_the_next_fetch(tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    v1 = publish(store, "v1/model.onnx", b"version one")
    v2 = publish(store, "v2/model.onnx", b"version two")
    # Another stage fetched v1 weeks ago, and has exited since.
    finish(fetching_child(v1, cache))
    (old_copy,) = cache.iterdir()
    age(old_copy)

    new_copy = fetch_file(v2, cache, uri_from="the test")

    assert copies(cache) == [new_copy.name], "the copy of v1 nobody used for 40 days is still on disk"
    assert new_copy.read_bytes() == b"version two"


FETCHES: dict[str, Callable[[str, Path], Path]] = {
    "file": lambda uri, cache: fetch_file(uri, cache, uri_from="the test"),
    "folder": lambda uri, cache: fetch_directory(uri, cache, uri_from="the test"),
}


@pytest.mark.parametrize("kind", FETCHES)
def test_a_volume_full_of_stale_copies_makes_room_for_the_new_version(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stale copies were deleted only after a fetch succeeded: on a volume they filled, the new
    # version's copy failed (ENOSPC) at every start, and the copies that took its room stayed.
    fetch, cache, store = FETCHES[kind], tmp_path / "cache", tmp_path / "store"
    v1, v2 = (publish_folder(store, f"v{n}", {"model.onnx": f"version {n}".encode()}) for n in (1, 2))
    if kind == "file":
        v1, v2 = f"{v1}/model.onnx", f"{v2}/model.onnx"
    old_copy = fetch(v1, cache)
    release(old_copy)  # the stage that used it has moved on
    age(old_copy)
    write = model_cache._write_durably

    def room_for_one_copy(path: Path, blocks: Iterable[bytes]) -> tuple[int, str]:
        if old_copy.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, blocks)

    monkeypatch.setattr(model_cache, "_write_durably", room_for_one_copy)
    new_copy = fetch(v2, cache)

    assert copies(cache) == [new_copy.name]
    held = new_copy if kind == "file" else new_copy / "model.onnx"
    assert held.read_bytes() == b"version 2"


def test_a_model_a_stage_ran_for_weeks_is_reused_at_its_restart_not_copied_again(tmp_path: Path) -> None:
    # Its copy was last marked used when that stage started: pruning before the reuse would delete it,
    # and a pipeline of gigabytes would be downloaded again at every restart after a long run.
    cache, folder = tmp_path / "cache", publish_folder(tmp_path / "store", "pipeline")
    copy = fetch_directory(folder, cache, uri_from="the test")
    release(copy)  # the stage has stopped, weeks after it fetched the copy
    age(copy)
    copied = copy.stat().st_ino

    again = fetch_directory(folder, cache, uri_from="the test")

    assert again == copy and again.stat().st_ino == copied


def test_a_copy_a_running_process_uses_is_kept_however_old(tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    v1 = publish(store, "v1/model.onnx", b"version one")
    v2 = publish(store, "v2/model.onnx", b"version two")
    # A long-lived stage loaded v1 forty days ago and still runs.
    stage = fetching_child(v1, cache)
    try:
        (in_use,) = cache.iterdir()
        age(in_use)
        new_copy = fetch_file(v2, cache, uri_from="the test")
        assert copies(cache) == sorted([in_use.name, new_copy.name])
        assert in_use.read_bytes() == b"version one"
    finally:
        finish(stage)
    # Once that stage is gone, the next fetch deletes the copy.
    fetch_file(v2, cache, uri_from="the test")
    assert copies(cache) == [new_copy.name]


def test_a_download_in_progress_is_kept_and_one_a_crash_left_is_deleted(tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    folder = publish_folder(store, "blip", {"config.json": b"{}", "weights.bin": b"w" * 1000})
    crashed = cache / ".partial-crashed"
    # Another process is in the middle of copying the folder: it stops after its first file.
    downloader = child(f"""
        import shared.model_cache as model_cache
        write = model_cache._write_durably
        def slow_write(path, blocks):
            written = write(path, blocks)
            model_cache._write_durably = write
            print("ready", flush=True)
            input()
            return written
        model_cache._write_durably = slow_write
        model_cache.fetch_directory({folder!r}, {str(cache)!r}, uri_from="the test")
    """)
    try:
        wait_ready(downloader)
        (downloading,) = (p for p in cache.iterdir() if p.name.startswith(".partial-"))
        age(downloading)
        # Left by a crash meanwhile (the downloader's fetch pruned before it copied).
        (crashed / "sub").mkdir(parents=True)
        (crashed / "sub" / "weights.bin").write_bytes(b"half")
        age(crashed)
        pruned = model_cache.prune_unused(cache, 30)
        assert pruned == [crashed.name]
        assert downloading.is_dir()
    finally:
        finish(downloader)
    copy = fetch_directory(folder, cache, uri_from="the test")
    assert (copy / "weights.bin").read_bytes() == b"w" * 1000
    assert copies(cache) == [copy.name]


def test_a_download_a_killed_process_left_is_deleted_at_the_next_fetch_not_weeks_later(
    tmp_path: Path,
) -> None:
    # A partial download was kept for the days a copy is: a generator killed while copying its pipeline
    # (its start-up probe, the OOM killer) left gigabytes at each restart, until the volume was full.
    cache, store = tmp_path / "cache", tmp_path / "store"
    folder = publish_folder(store, "blip", {"config.json": b"{}", "weights.bin": b"w" * 1000})
    downloader = child(f"""
        import shared.model_cache as model_cache
        write = model_cache._write_durably
        def slow_write(path, blocks):
            written = write(path, blocks)
            print("ready", flush=True)
            input()
            return written
        model_cache._write_durably = slow_write
        model_cache.fetch_directory({folder!r}, {str(cache)!r}, uri_from="the test")
    """)
    wait_ready(downloader)
    downloader.kill()
    downloader.communicate()
    (left,) = cache.iterdir()
    an_hour_ago = time.time() - 3600
    os.utime(left, (an_hour_ago, an_hour_ago))

    copy = fetch_directory(folder, cache, uri_from="the test")

    assert copies(cache) == [copy.name]


def test_a_copy_a_killed_pruner_was_deleting_is_deleted_at_the_next_fetch(tmp_path: Path) -> None:
    # A pruner renames a copy aside, then deletes its files; killed meanwhile (gigabytes take a while), it
    # left the rest under its .stale- name, last changed as it died: kept then for the days a copy is.
    cache, store = tmp_path / "cache", tmp_path / "store"
    folder = publish_folder(store, "blip")
    stale = cache / ".stale-4242-123456789"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "model.safetensors").write_bytes(b"half deleted")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))

    copy = fetch_directory(folder, cache, uri_from="the test")

    assert copies(cache) == [copy.name]


def test_a_running_generator_deletes_the_adapter_copies_nobody_used_for_weeks(tmp_path: Path) -> None:
    # Only a fetch of the diffusion model pruned, at start-up, and a generator given a local model never
    # fetched one: every adapter it was ever asked for stayed in its cache, however long ago.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    first, second, third = (
        registry.register(f"sku-{n}", lora_weights(n), kind="specialized", series=f"S{n}", base_model="sd15")
        for n in range(3)
    )
    cache = open_cache(tmp_path / "cache")
    generator = DiffusionBackend(
        RecordingPipe(),
        model_id="m",
        registry=registry,
        settings=load_settings(DiffusionSettings, diffusion_lora_cache_size=1),
        cache_dir=cache,
        device="cpu",  # type: ignore[arg-type]
    )
    generator.lora.activate(first)
    generator.lora.activate(second)  # evicts the first, whose copy nobody holds from now on
    age(cache / f"lora-{first.weights_sha256[:16]}")

    generator.lora.activate(third)

    assert copies(cache) == sorted(f"lora-{adapter.weights_sha256[:16]}" for adapter in (second, third))


def test_an_adapter_copy_another_process_prunes_as_it_lands_is_copied_again_and_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's pruner found the adapter's folder weeks old just before the weights were
    written into it, and moved it aside just after: ``hold`` said so (False), fetch_weights ignored it
    and returned a folder that was gone, for LoraSlots to load, and held nothing."""
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    adapter = registry.register("sku-1", lora_weights(1), kind="specialized", series="S1", base_model="sd15")
    cache = open_cache(tmp_path / "cache")
    write = adapters.write_blocks_atomically
    pruned: list[str] = []

    def written_then_pruned(
        path: Path, blocks: Iterable[bytes], *, check: Callable[[int, str], None] | None = None
    ) -> None:
        write(path, blocks, check=check)
        if not pruned:  # the first copy only
            age(path.parent)  # the age that pruner read, before the weights landed
            pruned.extend(pruned_by_another_process(cache))

    monkeypatch.setattr(adapters, "write_blocks_atomically", written_then_pruned)
    directory = registry.fetch_weights(adapter, cache)

    assert pruned == [directory.name]
    assert (directory / adapter.weight_name).read_bytes() == lora_weights(1)
    age(directory)
    assert pruned_by_another_process(cache) == []  # held, however old it looks
    release(directory)


def test_zero_keeps_every_copy(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = cache / "0123456789abcdef-model.onnx"
    old.parent.mkdir()
    old.write_bytes(b"old")
    age(old)
    assert model_cache.prune_unused(cache, 0) == []
    assert old.is_file()


def test_a_fraction_of_a_day_is_refused_at_start_up() -> None:
    # Minutes would count a slow download as unused.
    with pytest.raises(ConfigError, match="SKUFORGE_MODEL_CACHE_UNUSED_DAYS"):
        load_settings(model_cache_unused_days=0.01)
    assert load_settings(model_cache_unused_days=0).model_cache_unused_days == 0
