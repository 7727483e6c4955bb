"""Trainstore, review 39: odd real-photo masks, and images counted as stored that were stored already.

A real photo whose mask found no product (``no_product_found``, ``mask_full_frame``) is stored without a
mask, a real photo of the product for a classifier. Two events said so and were stored with a mask all
the same, which a jsonl export hands to training as the product's outline: a photo the event calls a
mask problem but that carries its mask (an older captioner, another producer), and a photo called
usable whose mask marks no pixel at all.

``skuforge_trainstore_images_stored_total`` counted every row that named an image, also a row written
again for an image its item's row already named: an event made again (a restarted gate or captioner
re-emits what it had not committed, with a new envelope and time) counted its images twice, and a replay
of old decisions read as images reaching the store (``SkuforgeNoImagesStored`` stayed quiet). And both
counters counted after the write's clean-up (objects put back, replaced ones deleted): a store error
there, once the rows were written, and the retried event found them written and counted nothing.

Nothing checked that an event's objects were of its SKU: a producer pairing one SKU's event with another
SKU's render had it stored under both, one image with two labels. ``skuforge dataset stats`` showed the
category of a SKU's first row, the old one after it changed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.envelope import Envelope
from schemas.events import GateAccepted, ImageMatted, SkuCaptioned
from schemas.topics import GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.errors import BadInput, TransientError
from shared.store import FileStore
from shared.trainstore.dataset import export_dataset, sku_stats
from shared.trainstore.withdrawals import Withdrawals
from tests.support.gate import captioned, matted_item
from tests.support.trainstore import manifest_row, stored, trainstore_stage

SKU = "SKU-001"


def _envelope(event: SkuCaptioned, event_id: str = "a") -> Envelope[SkuCaptioned]:
    return make_envelope(
        SKU_CAPTIONED, event, event_id=event_id * 32, sku_id=SKU, trace_id="t" * 32, producer="test"
    )


def test_a_photo_whose_mask_found_no_product_is_stored_without_the_mask_it_carries(tmp_path: Path) -> None:
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    event = captioned(store, 1, photos=3)
    size = (event.photos[0].image.height, event.photos[0].image.width)
    full = store.put_image("fixtures/full.png", np.full(size, 255, np.uint8))
    empty = store.put_image("fixtures/empty.png", np.zeros(size, np.uint8))
    p0, p1, p2, blurry = event.photos
    photos = [
        p0.model_copy(update={"usable": False, "unusable_reason": "mask_full_frame", "mask": full}),
        p1.model_copy(update={"mask": empty}),
        p2,
        blurry,
    ]
    writer.captioned(_envelope(event.model_copy(update={"photos": photos})), ctx)

    rows = manifests.read_sku(SKU)
    assert {photo_id: (rows[photo_id].status, rows[photo_id].reasons) for photo_id in ("p0", "p1")} == {
        "p0": ("reference", ["mask_full_frame"]),
        "p1": ("reference", ["no_product_found"]),
    }
    for photo_id in ("p0", "p1"):
        assert rows[photo_id].mask is None
        assert stored(manifests, SKU, photo_id, "real") == ([manifests.key(str(rows[photo_id].image))], [])
    assert rows["p2"].mask is not None  # a good mask stays

    export_dataset(manifests, tmp_path / "out", fmt="jsonl", max_synthetic_per_real=1)
    lines = [json.loads(line) for line in (tmp_path / "out" / "dataset.jsonl").read_text().splitlines()]
    masks = {line["item_id"]: line["mask"] for line in lines}
    assert (masks["p0"], masks["p1"]) == (None, None) and masks["p2"] is not None


def test_an_image_made_again_under_a_new_envelope_is_counted_once(tmp_path: Path) -> None:
    store, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    registry = CollectorRegistry()
    writer = Trainstore(manifests, compact_after_parts=16, registry=registry)
    item = matted_item(store, 1, 0)
    accepted = GateAccepted(matted=item, iou=1.0, checks=[])
    for event_id in "ab":  # the gate's acceptance, made again after a restart
        envelope = make_envelope(
            GATE_ACCEPTED, accepted, event_id=event_id * 32, sku_id=SKU, trace_id="t" * 32, producer="gate"
        )
        writer.accepted(envelope, ctx)
    event = captioned(store, 1, photos=2)
    for event_id in "cd":  # the captioner's, made again
        writer.captioned(_envelope(event, event_id), ctx)
    counted = {
        source: registry.get_sample_value("skuforge_trainstore_images_stored_total", {"source": source})
        for source in ("real", "synthetic")
    }
    assert counted == {"real": 2.0, "synthetic": 1.0}

    # A render with other pixels is another image stored.
    other = item.model_copy(
        update={"generated": item.generated.model_copy(update={"image": event.photos[0].image})}
    )
    envelope = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=other, iou=1.0, checks=[]),
        event_id="e" * 32,
        sku_id=SKU,
        trace_id="t" * 32,
        producer="gate",
    )
    writer.accepted(envelope, ctx)
    assert (
        registry.get_sample_value("skuforge_trainstore_images_stored_total", {"source": "synthetic"}) == 2.0
    )


class FailsFirstDelete(FileStore):
    """S3 answers 503 once, to the first deletion."""

    failed = False

    def _delete(self, key: str) -> None:
        if not self.failed:
            self.failed = True
            raise TransientError("S3 answered 503")
        super()._delete(key)


def test_an_image_is_counted_when_the_deletion_of_the_render_it_replaced_is_retried(tmp_path: Path) -> None:
    store = FailsFirstDelete(tmp_path / "store")
    _, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    registry = CollectorRegistry()
    writer = Trainstore(manifests, compact_after_parts=16, registry=registry)
    first = matted_item(store, 1, 0)
    # The item rendered again (same item id, other pixels): its first render's objects are deleted.
    photo = captioned(store, 1, photos=1).photos[0]
    again = first.model_copy(update={"generated": first.generated.model_copy(update={"image": photo.image})})
    envelopes = [
        make_envelope(
            GATE_ACCEPTED,
            GateAccepted(matted=item, iou=1.0, checks=[]),
            event_id=event_id * 32,
            sku_id=SKU,
            trace_id="t" * 32,
            producer="gate",
        )
        for item, event_id in ((first, "a"), (again, "b"))
    ]
    writer.accepted(envelopes[0], ctx)
    with pytest.raises(TransientError):
        writer.accepted(envelopes[1], ctx)  # its row is written, the old render's deletion fails
    writer.accepted(envelopes[1], ctx)  # the runtime's retry
    assert manifests.read_sku(SKU)[first.generated.item_id].image_sha256 == photo.image.sha256
    assert (
        registry.get_sample_value("skuforge_trainstore_images_stored_total", {"source": "synthetic"}) == 2.0
    )


def test_a_withdrawn_photo_is_counted_when_the_deletion_of_a_replaced_mask_is_retried(tmp_path: Path) -> None:
    store = FailsFirstDelete(tmp_path / "store")
    _, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    registry = CollectorRegistry()
    writer = Trainstore(manifests, compact_after_parts=16, registry=registry)
    event = captioned(store, 1, photos=2)
    p0, p1, _ = event.photos
    writer.captioned(_envelope(event.model_copy(update={"photos": [p1]}), "a"), ctx)
    Withdrawals(manifests).withdraw(SKU, event.sku.category, ["p0"], by="test")
    # Captioned again: p0 (withdrawn meanwhile) and p1 with another mask, whose old mask is deleted.
    mask = np.zeros((p1.image.height, p1.image.width), np.uint8)
    mask[10:-10, 10:-10] = 255
    p1_again = p1.model_copy(update={"mask": store.put_image("fixtures/p1-mask-again.png", mask)})
    again = _envelope(event.model_copy(update={"photos": [p0, p1_again]}), "b")
    with pytest.raises(TransientError):
        writer.captioned(again, ctx)
    writer.captioned(again, ctx)  # the runtime's retry

    assert manifests.read_sku(SKU)["p0"].status == "withdrawn"
    counted = registry.get_sample_value("skuforge_trainstore_items_withdrawn_total", {"source": "real"})
    assert counted == 1.0


def test_stats_show_the_category_of_the_newest_row() -> None:
    # A SKU recategorised ("can" to "soda can"): its older items keep the old category in their rows,
    # and stats showed whichever row came first.
    rows = [
        manifest_row("a-render", category="can", produced_at=datetime(2026, 11, 1, tzinfo=UTC)),
        manifest_row("b-render", category="soda can", produced_at=datetime(2026, 12, 1, tzinfo=UTC)),
        manifest_row("c-render", category="can"),  # written before rows recorded their time
    ]
    (stats,) = sku_stats(rows)
    assert stats.category == "soda can"


def _accepted(item: ImageMatted, image_key: str, mask_key: str, store: FileStore) -> Envelope[GateAccepted]:
    """SKU-001's item, its render and predicted mask copied to the given keys."""
    refs = {}
    for key, ref in ((image_key, item.generated.image), (mask_key, item.predicted_mask)):
        store.put_bytes(key, store.get_bytes(ref.uri), "image/png")
        refs[key] = ref.model_copy(update={"uri": store.uri_for(key)})
    generated = item.generated.model_copy(update={"image": refs[image_key]})
    matted = item.model_copy(update={"generated": generated, "predicted_mask": refs[mask_key]})
    return make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=matted, iou=1.0, checks=[]),
        event_id="a" * 32,
        sku_id=SKU,
        trace_id="t" * 32,
        producer="gate",
    )


@pytest.mark.parametrize(
    ("image_key", "mask_key", "refused"),
    [
        ("generated/SKU-002/gen.png", "masks/predicted/SKU-001/gen.png", "image"),
        ("generated/SKU-001/gen.png", "masks/predicted/SKU-002/gen.png", "predicted mask"),
    ],
)
def test_an_item_with_another_skus_object_is_dead_lettered(
    tmp_path: Path, image_key: str, mask_key: str, refused: str
) -> None:
    # A producer that paired SKU-001's event with SKU-002's render got the render stored under SKU-001
    # too: one image in two SKUs' classes, with two labels.
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    item = matted_item(store, 1, 0)
    with pytest.raises(BadInput) as refusal:
        writer.accepted(_accepted(item, image_key, mask_key, store), ctx)
    assert refusal.value.reason == "other_sku_object"
    uri = store.uri_for(image_key if refused == "image" else mask_key)
    assert (
        f"{refused} {uri}: an object of SKU SKU-002, not of the event's SKU SKU-001" in refusal.value.detail
    )
    assert manifests.read_sku(SKU) == {}

    # The same objects under SKU-001's folders are stored.
    ours = _accepted(item, "generated/SKU-001/gen.png", "masks/predicted/SKU-001/gen.png", store)
    writer.accepted(ours, ctx)
    assert manifests.read_sku(SKU)[item.generated.item_id].status == "accepted"
