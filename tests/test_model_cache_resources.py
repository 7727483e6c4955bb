"""The model cache's cost to a long-running process: memory while it copies, file handles after.

A diffusion pipeline's weights are gigabytes, and a generator serving many adapters fetches one copy
after another for days: neither the size of a file nor the number of copies fetched may set what the
process holds.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from shared.errors import BadInput, ChecksumMismatch
from shared.generation.adapters import AdapterRegistry
from shared.generation.diffusion import LoraSlots
from shared.model_cache import COMPLETE_MARKER, fetch_directory, fetch_file, open_cache, release
from shared.store import FileStore, sha256_hex
from tests.support.adapters import RecordingPipe
from tests.support.lora import lora_weights
from tests.support.memory import peak_traced_bytes
from tests.support.model_cache import age, copies, publish, publish_folder

WEIGHTS_BYTES = 32 << 20


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_folder_copy_takes_a_few_blocks_of_memory_whatever_its_files_size(tmp_path: Path) -> None:
    # Each file was read whole into memory before it was written: a 5 GB UNet needed 5 GB more.
    weights = bytes(range(256)) * (WEIGHTS_BYTES // 256)
    uri = publish_folder(
        tmp_path / "store", "pipeline", {"model_index.json": b"{}", "unet/model.safetensors": weights}
    )

    tracemalloc.start()
    try:
        copy = fetch_directory(uri, tmp_path / "cache", uri_from="the test")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < WEIGHTS_BYTES // 8, f"copying a {WEIGHTS_BYTES >> 20} MiB file took {peak >> 20} MiB"
    assert (copy / "unet" / "model.safetensors").read_bytes() == weights
    marker = json.loads((copy / COMPLETE_MARKER).read_text())
    assert marker["sizes"]["unet/model.safetensors"] == WEIGHTS_BYTES
    assert marker["sha256"]["unet/model.safetensors"] == sha256_hex(weights)


def test_a_generator_serving_many_adapters_keeps_a_handle_only_on_those_loaded(tmp_path: Path) -> None:
    # Every adapter fetched kept an open handle (its prune lock) for the life of the process, evicted
    # or not: a generator cycling through its registry ran out of file descriptors.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    adapters = [
        registry.register(f"sku-{n}", lora_weights(n), kind="specialized", series=f"S{n}", base_model="sd15")
        for n in range(24)
    ]
    cache = open_cache(tmp_path / "cache")
    slots = LoraSlots(RecordingPipe(), 2, lambda adapter: registry.fetch_weights(adapter, cache))
    before = _open_fds()

    for adapter in adapters:
        slots.activate(adapter)

    assert slots.loaded == ["sku-22", "sku-23"]
    assert _open_fds() - before <= 2, "copies of evicted adapters are still held open"


def test_an_adapter_that_fails_to_load_keeps_no_handle(tmp_path: Path) -> None:
    class RefusingPipe(RecordingPipe):
        def load_lora_weights(self, directory: str, *, weight_name: str, **_: Any) -> None:
            raise ValueError("no module named unet.to_q in this model")

    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    adapter = registry.register("sku-0", lora_weights(0), kind="specialized", series="S0", base_model="sd15")
    cache = open_cache(tmp_path / "cache")
    slots = LoraSlots(RefusingPipe(), 2, lambda adapter: registry.fetch_weights(adapter, cache))
    before = _open_fds()

    with pytest.raises(BadInput, match="does not fit this model"):
        slots.activate(adapter)

    assert slots.loaded == []
    assert _open_fds() == before


def test_a_copy_this_process_released_is_pruned_when_unused(tmp_path: Path) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    old = fetch_file(publish(store, "v1/model.onnx", b"version one"), cache, uri_from="the test")
    release(old)
    age(old)

    new = fetch_file(publish(store, "v2/model.onnx", b"version two"), cache, uri_from="the test")

    assert copies(cache) == [new.name]


def test_a_copy_fetched_twice_stays_held_until_released_twice(tmp_path: Path) -> None:
    # Two users of one copy in a process (two sessions on the same model): the first to let go must not
    # leave the other's copy to a pruner.
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish(store, "v1/model.onnx", b"version one")
    copy = fetch_file(uri, cache, uri_from="the test")
    assert fetch_file(uri, cache, uri_from="the test") == copy
    release(copy)
    age(copy)

    fetch_file(publish(store, "v2/model.onnx", b"version two"), cache, uri_from="the test")
    assert copy.exists(), "a copy still in use was pruned"

    release(copy)
    age(copy)
    fetch_file(publish(store, "v3/model.onnx", b"version three"), cache, uri_from="the test")
    assert not copy.exists()


def test_releasing_a_copy_not_held_does_nothing(tmp_path: Path) -> None:
    before = _open_fds()
    release(tmp_path / "never-fetched")
    assert _open_fds() == before


def test_a_file_copy_takes_a_few_blocks_of_memory_whatever_its_size(tmp_path: Path) -> None:
    # A model file was read whole into memory to name its copy by its digest: an ONNX model of
    # hundreds of MB needed as much again.
    weights = bytes(range(256)) * (WEIGHTS_BYTES // 256)
    uri = publish(tmp_path / "store", "v1/model.onnx", weights)

    peak = peak_traced_bytes(lambda: fetch_file(uri, tmp_path / "cache", uri_from="the test"))

    assert peak < WEIGHTS_BYTES // 8, f"copying a {WEIGHTS_BYTES >> 20} MiB file took {peak >> 20} MiB"
    [copy] = (tmp_path / "cache").iterdir()
    assert copy.name == f"{sha256_hex(weights)[:16]}-model.onnx"
    assert copy.read_bytes() == weights


def test_an_adapters_weights_are_copied_in_blocks_and_checked(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    weights = lora_weights(0, rank=WEIGHTS_BYTES // 32)  # a safetensors file of 32 MiB
    adapter = registry.register("sku-0", weights, kind="specialized", series="S0", base_model="sd15")
    cache = open_cache(tmp_path / "cache")

    copies_made: list[Path] = []
    peak = peak_traced_bytes(lambda: copies_made.append(registry.fetch_weights(adapter, cache)))

    assert peak < WEIGHTS_BYTES // 8, f"copying {len(weights) >> 20} MiB of weights took {peak >> 20} MiB"
    assert (copies_made[0] / adapter.weight_name).read_bytes() == weights


def test_weights_changed_in_the_store_are_refused_and_leave_nothing_in_the_cache(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    adapter = registry.register("sku-0", lora_weights(0), kind="specialized", series="S0", base_model="sd15")
    registry.store.put_bytes(f"sku-0/{adapter.weight_name}", lora_weights(1))  # changed behind its metadata
    cache = open_cache(tmp_path / "cache")

    with pytest.raises(ChecksumMismatch):
        registry.fetch_weights(adapter, cache)

    assert [path.name for path in cache.rglob("*") if path.is_file()] == []


def test_a_copy_is_released_by_any_path_that_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the exact path the fetch returned released a hold: a relative path, or one through a
    # link to the cache, left the copy held (and its descriptor open) for the life of the process.
    cache, store = tmp_path / "cache", tmp_path / "store"
    (tmp_path / "models").symlink_to(cache)
    first = fetch_file(publish(store, "v1/model.onnx", b"version one"), cache, uri_from="the test")
    second = fetch_file(publish(store, "v2/model.onnx", b"version two"), cache, uri_from="the test")
    monkeypatch.chdir(tmp_path)

    release(Path("cache") / first.name)
    release(tmp_path / "models" / second.name)
    age(first)
    age(second)
    newest = fetch_file(publish(store, "v3/model.onnx", b"version three"), cache, uri_from="the test")

    assert copies(cache) == [newest.name]
