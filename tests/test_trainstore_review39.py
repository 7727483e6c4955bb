"""Trainstore, review 39: odd real-photo masks.

A real photo whose mask found no product (``no_product_found``, ``mask_full_frame``) is stored without a
mask, a real photo of the product for a classifier. Two events said so and were stored with a mask all
the same, which a jsonl export hands to training as the product's outline: a photo the event calls a
mask problem but that carries its mask (an older captioner, another producer), and a photo called
usable whose mask marks no pixel at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from schemas.envelope import Envelope
from schemas.events import SkuCaptioned
from schemas.topics import SKU_CAPTIONED
from shared.bus import make_envelope
from shared.trainstore.dataset import export_dataset
from tests.support.gate import captioned
from tests.support.trainstore import stored, trainstore_stage

SKU = "SKU-001"


def _envelope(event: SkuCaptioned) -> Envelope[SkuCaptioned]:
    return make_envelope(
        SKU_CAPTIONED, event, event_id="a" * 32, sku_id=SKU, trace_id="t" * 32, producer="test"
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
