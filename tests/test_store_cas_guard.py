"""The hidden guard file a FileStore's compare-and-swap leaves beside a key (``.skuforge-tmp-cas-*``,
its ``flock`` makes one swap of that key run at a time across processes) stays, and no listing names
it: not the store's, not the adapter registry's, not a removed adapter's folder.

It is not removed after use: a process that opened it before its removal would lock the removed file
while the next one locks a new one under the name, two swaps at once (see ``_compare_and_swap``)."""

from __future__ import annotations

from pathlib import Path

from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from tests.support.lora import lora_weights


def test_a_lock_taken_over_and_released_leaves_nothing_a_listing_names(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert store.put_new("locks/a.json", b'{"holder": 1}')
    _, version = store.get_versioned("locks/a.json")
    assert store.replace_if("locks/a.json", b'{"holder": 2}', version)
    _, version = store.get_versioned("locks/a.json")
    assert store.delete_if("locks/a.json", version)

    assert list(store.list_keys()) == []
    assert list(store.list_addressable("locks/")) == []


def test_a_registered_then_removed_adapter_leaves_no_listed_key_nor_file_in_its_folder(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path)
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    registry.remove("cola-v")

    assert registry.list() == []
    assert list(store.list_keys()) == []
    assert list((tmp_path / "cola-v").iterdir()) == []  # its lock's guard is under _registering/
