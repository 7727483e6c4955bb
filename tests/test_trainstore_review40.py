"""Trainstore, review 40: images counted when the manifest write that stored them raised.

A store that answers too late (a timeout once S3 has stored the object) raises out of the manifest's
append although the rows are written. The runtime retries the event, which finds its rows written and
writes nothing, so ``skuforge_trainstore_images_stored_total`` never counted those images, nor
``skuforge_trainstore_items_withdrawn_total`` those withdrawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.envelope import Envelope
from schemas.events import GateAccepted, SkuCaptioned
from schemas.topics import GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.errors import TransientError
from shared.trainstore.withdrawals import Withdrawals
from tests.support.gate import captioned, matted_item
from tests.support.trainstore import TimesOutOnce, trainstore_stage

SKU = "SKU-001"


def test_an_image_whose_manifest_write_timed_out_after_storing_it_is_counted_once(tmp_path: Path) -> None:
    store = TimesOutOnce(tmp_path / "store")
    _, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    registry = CollectorRegistry()
    writer = Trainstore(manifests, compact_after_parts=16, registry=registry)
    item = matted_item(store, 1, 0)
    envelope = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=item, iou=1.0, checks=[]),
        event_id="a" * 32,
        sku_id=SKU,
        trace_id="t" * 32,
        producer="gate",
    )
    store.armed = True
    with pytest.raises(TransientError):
        writer.accepted(envelope, ctx)  # its row is written, the answer timed out
    writer.accepted(envelope, ctx)  # the runtime's retry
    writer.accepted(envelope, ctx)  # delivered again later (a replay): nothing new
    assert manifests.read_sku(SKU)[item.generated.item_id].status == "accepted"
    assert (
        registry.get_sample_value("skuforge_trainstore_images_stored_total", {"source": "synthetic"}) == 1.0
    )


def test_a_photo_withdrawn_by_a_manifest_write_that_timed_out_after_storing_it_is_counted_once(
    tmp_path: Path,
) -> None:
    store = TimesOutOnce(tmp_path / "store")
    _, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    registry = CollectorRegistry()
    writer = Trainstore(manifests, compact_after_parts=16, registry=registry)
    event = captioned(store, 1, photos=2)
    p0, p1, _ = event.photos

    def envelope(photos: list[Any], event_id: str) -> Envelope[SkuCaptioned]:
        return make_envelope(
            SKU_CAPTIONED,
            event.model_copy(update={"photos": photos}),
            event_id=event_id * 32,
            sku_id=SKU,
            trace_id="t" * 32,
            producer="test",
        )

    writer.captioned(envelope([p1], "a"), ctx)
    Withdrawals(manifests).withdraw(SKU, event.sku.category, ["p0"], by="test")
    again = envelope([p0, p1], "b")  # p0 withdrawn meanwhile
    store.armed = True
    with pytest.raises(TransientError):
        writer.captioned(again, ctx)
    writer.captioned(again, ctx)  # the runtime's retry
    writer.captioned(again, ctx)  # delivered again later: nothing new

    assert manifests.read_sku(SKU)["p0"].status == "withdrawn"
    counted = registry.get_sample_value("skuforge_trainstore_items_withdrawn_total", {"source": "real"})
    assert counted == 1.0
