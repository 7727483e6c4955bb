"""Two registrations of one adapter id at once (the LoRA trainer and `skuforge adapters register`, or
two trainers), or a registration and a removal, on the real stores: whichever metadata stands, the
weights it names are in the registry.

The second registration starts inside the first one's clean-up of old weights files (or the
removal's), and runs until it has finished or waits for the first's lock.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import ObjectMissing
from shared.generation import adapters as adapters_module
from shared.generation.adapters import (
    REGISTER_LOCKS,
    AdapterRegistry,
    RegistrationTakenOver,
    weights_file_name,
)
from shared.store import ObjectStore, sha256_hex
from tests.support.adapters import OtherRegistration
from tests.support.lora import lora_weights
from tests.support.s3 import file_or_s3_store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path / "adapters")


def _registering_whole_at_the_listing(store: ObjectStore, other: OtherRegistration) -> ObjectStore:
    """A copy of ``store`` on which ``other`` registers cola-v whole (or waits for the lock) just
    before the adapter's files are listed."""
    hooked = copy.copy(store)
    listed = hooked.list_addressable

    def other_registers_first(prefix: str = "") -> Iterator[str]:
        if prefix == "cola-v/":
            other.meanwhile()
        return listed(prefix)

    hooked.list_addressable = other_registers_first  # type: ignore[method-assign]
    return hooked


def test_a_registration_landing_during_another_ones_clean_up_keeps_its_weights(store: ObjectStore) -> None:
    """The first registration deleted every weights file but its own and the one it replaced, as it
    had listed them before the second registered: the second's metadata stood, naming weights deleted
    from under it, and every SKU of the series was refused until someone registered it again."""
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")

    other = OtherRegistration(store, lora_weights(3))
    first_store = _registering_whole_at_the_listing(store, other)
    AdapterRegistry(first_store).register(
        "cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15"
    )
    other.thread.join(timeout=60)

    current = registry.get("cola-v")
    assert registry.registered_weights(current) == lora_weights(3)  # ObjectMissing when deleted


def test_a_registration_landing_between_the_others_last_look_and_its_delete_keeps_its_weights(
    store: ObjectStore,
) -> None:
    """The second registration (back to weights registered earlier) ran whole between the first's
    last read of the metadata and its delete of those older weights: the first deleted them all the
    same, and the second's metadata stood, naming weights no longer there."""
    registry = AdapterRegistry(store)
    for seed in (1, 2):
        registry.register("cola-v", lora_weights(seed), kind="specialized", series="Cola", base_model="sd15")

    first_store = copy.copy(store)
    delete = first_store.delete
    other = OtherRegistration(store, lora_weights(1))

    def other_registers_first(key: str) -> None:
        if key == f"cola-v/{weights_file_name(sha256_hex(lora_weights(1)))}":
            other.meanwhile()
        delete(key)

    first_store.delete = other_registers_first  # type: ignore[method-assign]
    AdapterRegistry(first_store).register(
        "cola-v", lora_weights(3), kind="specialized", series="Cola", base_model="sd15"
    )
    other.thread.join(timeout=60)

    current = registry.get("cola-v")
    assert registry.registered_weights(current) == lora_weights(1)  # ObjectMissing when deleted


def test_the_lock_of_a_killed_registration_is_taken_over_once_stale(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration killed while it held the lock leaves it behind: the next one waits for it no
    longer than REGISTER_LOCK_STALE_S (here none), then takes it over, lands, and removes it."""
    monkeypatch.setattr(adapters_module, "REGISTER_LOCK_STALE_S", 0.0)
    store.put_json(f"{REGISTER_LOCKS}/cola-v.json", {"registration": "killed", "host": "gone", "pid": 1})
    registry = AdapterRegistry(store)

    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")

    assert registry.registered_weights(registry.get("cola-v")) == lora_weights(1)
    assert not store.exists(f"{REGISTER_LOCKS}/cola-v.json")


def test_a_registration_whose_lock_was_taken_over_leaves_the_new_holders_lock(store: ObjectStore) -> None:
    """A registration paused past REGISTER_LOCK_STALE_S, its lock taken over meanwhile, removes only its
    own lock when it ends: the one that took it over goes on holding it."""
    registry_store = copy.copy(store)
    listed = registry_store.list_addressable
    lock_key = f"{REGISTER_LOCKS}/cola-v.json"
    taker = {"registration": "took-over", "host": "other", "pid": 2}

    def taken_over_meanwhile(prefix: str = "") -> Iterator[str]:
        if prefix == "cola-v/":
            store.put_json(lock_key, taker)
        return listed(prefix)

    registry_store.list_addressable = taken_over_meanwhile  # type: ignore[method-assign]
    AdapterRegistry(registry_store).register(
        "cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15"
    )

    assert json.loads(store.get_bytes(lock_key)) == taker


def test_a_registration_landing_during_a_removal_keeps_its_weights(store: ObjectStore) -> None:
    """A removal listed the adapter's weights files once a registration of that id had run whole since
    it deleted the metadata, and deleted the registration's weights with the rest: the registration's
    metadata stood, naming weights no longer there."""
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")

    other = OtherRegistration(store, lora_weights(2))
    removing_store = _registering_whole_at_the_listing(store, other)
    AdapterRegistry(removing_store).remove("cola-v")
    other.thread.join(timeout=60)

    current = registry.get("cola-v")
    assert registry.registered_weights(current) == lora_weights(2)  # ObjectMissing when deleted


def _taken_over_at_the_look(
    store: ObjectStore, paused_at: str, monkeypatch: pytest.MonkeyPatch
) -> ObjectStore:
    """A copy of ``store`` whose registration or removal pauses, holding the lock, at its look at
    ``paused_at`` past REGISTER_LOCK_STALE_S (here none): meanwhile another registration takes its lock
    over and registers cola-v whole with lora_weights(3)."""
    monkeypatch.setattr(adapters_module, "REGISTER_LOCK_STALE_S", 0.0)
    paused = copy.copy(store)
    exists = paused.exists

    def taken_over_meanwhile(key: str) -> bool:
        if key == paused_at:
            AdapterRegistry(store).register(
                "cola-v", lora_weights(3), kind="specialized", series="Cola", base_model="sd15"
            )
        return exists(key)

    paused.exists = taken_over_meanwhile  # type: ignore[method-assign]
    return paused


def test_a_registration_whose_lock_was_taken_over_before_it_published_does_not_publish(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration paused past REGISTER_LOCK_STALE_S while it held the lock, and taken over, wrote
    its metadata over the registration that took over (which had landed and said so), and deleted the
    weights that one's listing named."""
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    weights_key = f"cola-v/{weights_file_name(sha256_hex(lora_weights(2)))}"
    paused = _taken_over_at_the_look(store, weights_key, monkeypatch)

    with pytest.raises(RegistrationTakenOver, match=r"cola-v: .*took over .*published nothing"):
        AdapterRegistry(paused).register(
            "cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15"
        )

    assert registry.registered_weights(registry.get("cola-v")) == lora_weights(3)


def test_a_removal_whose_lock_was_taken_over_does_not_remove_the_registration_that_took_it(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal paused past REGISTER_LOCK_STALE_S while it held the lock, and taken over by a
    registration, deleted that registration's metadata and weights after it had landed."""
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    paused = _taken_over_at_the_look(store, "cola-v/metadata.json", monkeypatch)

    with pytest.raises(RegistrationTakenOver, match=r"cola-v: .*took over .*removed nothing"):
        AdapterRegistry(paused).remove("cola-v")

    assert registry.registered_weights(registry.get("cola-v")) == lora_weights(3)


def test_a_removal_taken_over_by_another_after_the_metadata_leaves_no_weights(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal paused past REGISTER_LOCK_STALE_S after deleting the metadata, and another removal took
    its lock over: that one found no metadata and removed nothing, the first deleted nothing once taken
    over, and both registrations' weights stayed in the registry for good, no metadata naming them."""
    monkeypatch.setattr(adapters_module, "REGISTER_LOCK_STALE_S", 0.0)
    registry = AdapterRegistry(store)
    for seed in (1, 2):
        registry.register("cola-v", lora_weights(seed), kind="specialized", series="Cola", base_model="sd15")
    paused = copy.copy(store)
    listed = paused.list_addressable

    def removed_meanwhile(prefix: str = "") -> Iterator[str]:
        if prefix == "cola-v/":
            with pytest.raises(ObjectMissing):  # nothing registered by that id, as the CLI says
                registry.remove("cola-v")
        return listed(prefix)

    paused.list_addressable = removed_meanwhile  # type: ignore[method-assign]
    AdapterRegistry(paused).remove("cola-v")

    assert list(store.list_addressable("cola-v/")) == []
