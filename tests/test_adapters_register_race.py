"""Two registrations of one adapter id at once (the LoRA trainer and `skuforge adapters register`, or
two trainers) on the real stores: whichever metadata stands, the weights it names are in the registry.

The second registration runs whole inside the first one's clean-up of old weights files, the moment
the first has read which registration is current and not yet deleted anything.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore, ObjectStore
from tests.support.lora import lora_weights


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "adapters")
    s3_store: ObjectStore = request.getfixturevalue("s3_store")
    return s3_store


def test_a_registration_landing_during_another_ones_clean_up_keeps_its_weights(store: ObjectStore) -> None:
    """The first registration deleted every weights file but its own and the one it replaced, as it
    had listed them before the second registered: the second's metadata stood, naming weights deleted
    from under it, and every SKU of the series was refused until someone registered it again."""
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")

    first_store = copy.copy(store)  # the same store, seen by another process
    listed = first_store.list_addressable
    others = [lora_weights(3)]

    def other_registers_first(prefix: str = "") -> Iterator[str]:
        if prefix == "cola-v/" and others:
            registry.register("cola-v", others.pop(), kind="specialized", series="Cola", base_model="sd15")
        return listed(prefix)

    first_store.list_addressable = other_registers_first  # type: ignore[method-assign]
    AdapterRegistry(first_store).register(
        "cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15"
    )

    current = registry.get("cola-v")
    assert registry.registered_weights(current) == lora_weights(3)  # ObjectMissing when deleted
