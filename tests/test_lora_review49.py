"""The LoRA trainer, review 49: a re-captioned SKU's earlier series request is found through its index
(``lora-trainer/skus/<sku_id>.json``), not by listing every series request in the store at every
``sku.captioned``; a store an earlier release wrote (no index) is still read, by the listing, once per SKU.

Through the real handler (``record``) on a file store that counts what it lists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.lora_trainer.stage import PREFIX
from shared.errors import BadInput
from shared.lora_training.dataset import slug
from tests.support.captioning import captioned_sku
from tests.support.lora import CountingStore, record

SERIES = f"{PREFIX}/series/"
SKU_INDEX = f"{PREFIX}/skus"  # docs/ops.md


def _requests_of(store: CountingStore, sku_id: str) -> list[str]:
    return sorted(key for key in store.list_keys(SERIES) if key.endswith(f"/{sku_id}.json"))


def test_a_recaptioned_sku_leaves_its_old_series_without_listing_every_request(tmp_path: Path) -> None:
    """Each sku.captioned listed every series request of every SKU (its old series is not in the event),
    so captioning a catalogue of n SKUs listed n times n keys."""
    store = CountingStore(tmp_path / "store")
    first = captioned_sku(store, 1, usable_photos=1, series="Cola")
    record(store, first)
    record(store, captioned_sku(store, 2, usable_photos=1, series="Zest"))
    store.listed.clear()

    record(store, captioned_sku(store, 1, usable_photos=1, series="Zest"))  # re-captioned, another series

    assert store.listed == []
    sku_id = first.sku.sku_id
    assert _requests_of(store, sku_id) == [f"{SERIES}{slug('Zest')}/{sku_id}.json"]


def test_a_sku_recorded_by_an_earlier_release_is_found_by_the_listing_once(tmp_path: Path) -> None:
    """A request an earlier release wrote has no index: the listing finds it, the index is written, and
    the SKU's next event lists nothing."""
    store = CountingStore(tmp_path / "store")
    old = captioned_sku(store, 1, usable_photos=1, series="Cola")
    sku_id = old.sku.sku_id
    store.put_json(f"{SERIES}{slug('Cola')}/{sku_id}.json", old)  # as a trainer before the index wrote it
    assert not store.exists(f"{SKU_INDEX}/{sku_id}.json")

    record(store, captioned_sku(store, 1, usable_photos=1, series="Zest"))
    assert _requests_of(store, sku_id) == [f"{SERIES}{slug('Zest')}/{sku_id}.json"]
    store.listed.clear()

    record(store, captioned_sku(store, 1, usable_photos=1, series=""))  # its series cleared

    assert store.listed == []
    assert _requests_of(store, sku_id) == []


@pytest.mark.parametrize(
    "index",
    [
        '{"request": ',
        '{"request": "lora-trainer/series/../{sku_id}.json"}',
        '{"request": "lora-trainer/series/cola/../../images/{sku_id}.json"}',
        '["lora-trainer/series/cola/{sku_id}.json"]',
    ],
)
def test_an_unreadable_index_falls_back_to_the_listing(tmp_path: Path, index: str) -> None:
    """An index cut short, or edited by hand to name an object that is no series request of the SKU, is
    not trusted (nor that object deleted): the listing finds the SKU's requests."""
    store = CountingStore(tmp_path / "store")
    first = captioned_sku(store, 1, usable_photos=1, series="Cola")
    sku_id = first.sku.sku_id
    record(store, first)
    store.put_json(f"images/{sku_id}.json", {"not": "a series request"})
    index_bytes = index.replace("{sku_id}", sku_id).encode()
    store.put_bytes(f"{SKU_INDEX}/{sku_id}.json", index_bytes, content_type="application/json")

    record(store, captioned_sku(store, 1, usable_photos=1, series="Zest"))

    assert _requests_of(store, sku_id) == [f"{SERIES}{slug('Zest')}/{sku_id}.json"]
    assert store.exists(f"images/{sku_id}.json")


def test_a_sku_with_no_usable_photo_leaves_its_series_without_listing(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    first = captioned_sku(store, 1, usable_photos=1, series="Cola")
    sku_id = first.sku.sku_id
    record(store, first)
    store.listed.clear()

    with pytest.raises(BadInput):
        record(store, captioned_sku(store, 1, usable_photos=0, unusable_photos=1, series="Cola"))

    assert store.listed == []
    assert _requests_of(store, sku_id) == []
    record(store, first)  # a replay once fixed records it again
    assert _requests_of(store, sku_id) == [f"{SERIES}{slug('Cola')}/{sku_id}.json"]
