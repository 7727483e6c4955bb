"""Registering an adapter's weights again, on the real stores: weights the registry already holds, as
they are, are not uploaded again (they run to hundreds of MB); damaged ones are."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from shared.generation.adapters import AdapterRegistry, weights_file_name
from shared.store import FileStore, ObjectStore, sha256_hex
from tests.support.lora import lora_weights


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "adapters")
    s3_store: ObjectStore = request.getfixturevalue("s3_store")
    return s3_store


def _counting_puts(store: ObjectStore) -> tuple[ObjectStore, list[str]]:
    """The same store, and the keys of every ``put_bytes`` made through it."""
    counting = copy.copy(store)
    put_bytes = counting.put_bytes
    puts: list[str] = []

    def counted(key: str, data: bytes, content_type: str = "application/octet-stream") -> object:
        puts.append(key)
        return put_bytes(key, data, content_type)

    counting.put_bytes = counted  # type: ignore[assignment,method-assign]
    return counting, puts


def test_registering_the_same_weights_again_uploads_them_once(store: ObjectStore) -> None:
    """Each registration wrote the weights again, though they were there under their own sha256."""
    counting, puts = _counting_puts(store)
    registry = AdapterRegistry(counting)
    weights_key = f"cola-v/{weights_file_name(sha256_hex(lora_weights(1)))}"

    for _ in range(2):
        registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")

    assert puts.count(weights_key) == 1
    assert registry.registered_weights(registry.get("cola-v")) == lora_weights(1)


@pytest.mark.parametrize("damage", ["same size", "cut short"])
def test_weights_damaged_in_the_store_are_uploaded_again(store: ObjectStore, damage: str) -> None:
    """Registering the weights again is how damaged ones are mended: skipped on their name alone, the
    damage stayed, and every generator refused them."""
    registry = AdapterRegistry(store)
    weights = lora_weights(1)
    metadata = registry.register("cola-v", weights, kind="specialized", series="Cola", base_model="sd15")
    damaged = weights[:-1] + bytes([weights[-1] ^ 1]) if damage == "same size" else weights[:-1]
    store.put_bytes(f"cola-v/{metadata.weight_name}", damaged)

    registry.register("cola-v", weights, kind="specialized", series="Cola", base_model="sd15")

    assert registry.registered_weights(registry.get("cola-v")) == weights  # ChecksumMismatch when damaged
