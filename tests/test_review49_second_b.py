"""Second-opinion review 49 (b): the LoRA trainer's per-SKU index of series requests
(``lora-trainer/skus/<sku_id>.json``) must name every series request a SKU has, however a handler's
writes were cut short, or the SKU's next event leaves a request behind and its series trains on the
SKU for good (the listing the index replaced found every one).

Through the real handler (``record``) on a file store; a handler cut short is a write or delete that
fails once (the trainer dying there, or a failure that dead-letters the event).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.lora_trainer.stage import PREFIX
from shared.errors import BadInput
from shared.lora_training.dataset import slug
from tests.support.captioning import captioned_sku
from tests.support.lora import CountingStore, record

SERIES = f"{PREFIX}/series/"


class _FailsOnce(CountingStore):
    """A file store whose next write or delete of a key ``fails_at`` accepts raises (the trainer dies
    there, or the store refuses it for good: the event is dead-lettered ``handler_error``)."""

    fails_at: Callable[[str], bool] | None = None

    def _fail(self, key: str) -> None:
        if self.fails_at is not None and self.fails_at(key):
            self.fails_at = None
            raise RuntimeError(f"the trainer died at {key}")

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        self._fail(key)
        super()._write(key, data, content_type)

    def _delete(self, key: str) -> None:
        self._fail(key)
        super()._delete(key)


def _requests_of(store: CountingStore, sku_id: str) -> list[str]:
    return sorted(key for key in store.list_keys(SERIES) if key.endswith(f"/{sku_id}.json"))


def test_a_move_cut_short_then_refused_on_redelivery_leaves_no_request(tmp_path: Path) -> None:
    """A trainer that wrote the new request first and the index last (e5702c79), dead between the two,
    left the index naming the old request; redelivered and refused (its photo gone meanwhile), the
    event deleted only what the index named."""
    store = CountingStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="Cola"))
    moved = captioned_sku(store, 1, usable_photos=1, series="Zest")
    sku_id = moved.sku.sku_id
    store.put_json(f"{SERIES}{slug('Zest')}/{sku_id}.json", moved)  # its first attempt, cut short

    store.delete(moved.photos[0].image.uri.removeprefix(f"{store.base_uri}/"))  # gone meanwhile
    with pytest.raises(BadInput):
        record(store, moved)  # the same event, redelivered: now refused

    # Neither series trains on a SKU whose photo is gone (the Zest request named the photo).
    assert _requests_of(store, sku_id) == []


@pytest.mark.parametrize(
    "fails_at",
    ["the old request's delete", "the index's write", "the new request's write"],
)
def test_a_move_dead_lettered_half_way_leaves_no_request_for_the_next_move(
    tmp_path: Path, fails_at: str
) -> None:
    """A move whose handler fails part-way for good (dead-lettered ``handler_error``, its offset
    committed: not redelivered) left the new request written and the index naming the old one; the
    SKU's next move deleted what the index named, and the request of the half-done move stayed: its
    series trained on the SKU for good (the listing, before the index, found it)."""
    store = _FailsOnce(tmp_path / "store")
    first = captioned_sku(store, 1, usable_photos=1, series="Cola")
    sku_id = first.sku.sku_id
    record(store, first)
    failing: dict[str, Callable[[str], bool]] = {
        "the old request's delete": lambda key: key == f"{SERIES}{slug('Cola')}/{sku_id}.json",
        "the index's write": lambda key: key == f"{PREFIX}/skus/{sku_id}.json",
        "the new request's write": lambda key: key == f"{SERIES}{slug('Zest')}/{sku_id}.json",
    }
    store.fails_at = failing[fails_at]
    with pytest.raises(RuntimeError):
        record(store, captioned_sku(store, 1, usable_photos=1, series="Zest"))  # dead-lettered

    record(store, captioned_sku(store, 1, usable_photos=1, series="Mint"))  # the SKU's next event

    assert _requests_of(store, sku_id) == [f"{SERIES}{slug('Mint')}/{sku_id}.json"]
