"""Second-opinion review of review 46's changes: what they left half done, held by tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from schemas.common import ObjectRef
from schemas.events import CaptionedPhoto, SkuCaptioned
from schemas.topics import SKU_CAPTIONED
from shared import keys
from shared.bus import make_envelope
from shared.errors import ObjectMissing
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from tests.support.gate import sku
from tests.support.trainstore import PREFIX, trainstore_stage

SKU = "SKU-001"


class _WithdrawnOnSecondRead(FileStore):
    """A store where ingest withdraws the SKU's photo p1 once it has been read once: its marker first,
    then the photo under incoming/ deleted (``shared.trainstore.withdrawals``)."""

    reads = 0

    def read_verified(self, ref: ObjectRef) -> bytes:
        if ref.uri.endswith(keys.photo_key(SKU, "p1")):
            self.reads += 1
            if self.reads > 1:
                marker = ManifestStore(self, PREFIX).key(f"withdrawals/{SKU}/p1.json")
                record = {"photo_id": "p1", "withdrawn_at": datetime.now(UTC).isoformat(), "by": "test"}
                self.put_bytes(marker, json.dumps(record).encode())
                self.delete(self.key_for(ref.uri))
                raise ObjectMissing(ref.uri)
        return super().read_verified(ref)


def _captioned(store: FileStore, photos: int) -> SkuCaptioned:
    rng = np.random.default_rng(46)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:-8, 8:-8] = 255
    return SkuCaptioned(
        sku=sku(1),
        photos=[
            CaptionedPhoto(
                photo_id=f"p{index}",
                image=store.put_image(
                    keys.photo_key(SKU, f"p{index}"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                ),
                mask=store.put_image(keys.reference_mask_key(SKU, f"p{index}"), mask),
                usable=True,
            )
            for index in range(photos)
        ],
        instance_token="sks",
        class_noun="can",
        instance_prompt="a photo of sks can",
        class_prompt="a photo of a can",
        captioner="test",
    )


def test_a_photo_withdrawn_between_its_check_and_its_write_is_stored_withdrawn_not_dead_lettered(
    tmp_path: Path,
) -> None:
    """The trainstore reads a captioning's photos again as it writes them (5d360c52). A withdrawal in
    between (ingest writes the marker, then deletes the photo) found the photo gone and dead-lettered
    the whole captioning, every other photo with it, where the photo's bytes held until then stored it
    (and a withdrawal a moment earlier writes it ``withdrawn``). It is written ``withdrawn`` now."""
    store = _WithdrawnOnSecondRead(tmp_path / "store")
    _, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    event = make_envelope(
        SKU_CAPTIONED, _captioned(store, 3), event_id="a" * 32, sku_id=SKU, trace_id="t" * 32, producer="t"
    )

    trainstore.captioned(event, ctx)

    rows = manifests.read_sku(SKU)
    assert {item_id: row.status for item_id, row in rows.items()} == {
        "p0": "reference",
        "p1": "withdrawn",
        "p2": "reference",
    }
    for item_id in ("p0", "p2"):
        assert store.exists(manifests.key(str(rows[item_id].image)))
    assert rows["p1"].image is None
    assert manifests.stored_objects(SKU, "real", "p1") == []
