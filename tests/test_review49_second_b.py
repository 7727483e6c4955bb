"""Second-opinion review 49 (b): the LoRA trainer's per-SKU index of series requests.

A ``sku.captioned`` moving a SKU to another series writes the new request, deletes the old one, then
writes the SKU's index (``lora-trainer/skus/<sku_id>.json``). A crash after the new request is written
is redelivered with the index still naming the old request. Where the redelivered event is then refused
(its photo gone meanwhile: ``BadInput``), the handler deletes what the index names; the request the
first attempt wrote was found, before the index, by the listing, and deleted too.

Through the real handler (``record``) on a file store; the crash is a delete that fails once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.lora_trainer.stage import PREFIX
from shared.errors import BadInput
from tests.support.captioning import captioned_sku
from tests.support.lora import CountingStore, record

SERIES = f"{PREFIX}/series/"


class _CrashOnDelete(CountingStore):
    """A file store whose next delete fails (the process dies there), once ``crash`` is set."""

    crash = False

    def _delete(self, key: str) -> None:
        if self.crash:
            self.crash = False
            raise RuntimeError("the trainer died here")
        super()._delete(key)


def _requests_of(store: CountingStore, sku_id: str) -> list[str]:
    return sorted(key for key in store.list_keys(SERIES) if key.endswith(f"/{sku_id}.json"))


def test_a_move_cut_short_then_refused_on_redelivery_leaves_no_request(tmp_path: Path) -> None:
    store = _CrashOnDelete(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="Cola"))
    moved = captioned_sku(store, 1, usable_photos=1, series="Zest")
    sku_id = moved.sku.sku_id

    store.crash = True  # the new request is written; the old one's delete is where the trainer dies
    with pytest.raises(RuntimeError):
        record(store, moved)
    assert len(_requests_of(store, sku_id)) == 2

    store.delete(moved.photos[0].image.uri.removeprefix(f"{store.base_uri}/"))  # gone meanwhile
    with pytest.raises(BadInput):
        record(store, moved)  # the same event, redelivered: now refused

    # Neither series trains on a SKU whose photo is gone (the Zest request named the photo).
    assert _requests_of(store, sku_id) == []
