"""Objects of a replaced render that no manifest row names are swept, on S3 (moto's server).

When a new render of an item replaces the stored one, the stage deletes the objects the old row named.
A deletion cut short (the store away for a moment) left them for ever: the event, delivered again, found
its row written and deleted nothing. They are now swept when the item is replaced again, once written
``SKUFORGE_TRAINSTORE_SWEEP_GRACE_S`` before (S3's LastModified): a younger object may be another
member's whose row is still on its way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.envelope import Envelope
from schemas.events import GateAccepted, ImageMatted
from schemas.topics import GATE_ACCEPTED
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.config import Settings
from shared.errors import TransientError
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore, ObjectStore, S3Store
from shared.trainstore.manifest import ManifestStore
from tests.support.gate import matted_item
from tests.support.trainstore import PREFIX, stored

SKU = "SKU-001"
T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


class DeleteFailsOnce(S3Store):
    """An S3 store whose first delete of a synthetic image fails as an outage does (after botocore's
    retries): the stage's handler raises TransientError and the event is delivered again."""

    failed = False

    def _delete(self, key: str) -> None:
        if not self.failed and f"/images/{SKU}/synthetic/" in key:
            self.failed = True
            raise TransientError(f"S3 unreachable for {self.uri_for(key)}")
        super()._delete(key)


def _renders(store: ObjectStore, count: int) -> list[ImageMatted]:
    """``count`` renders of one item (a variant rendered again keeps its item id)."""
    first = matted_item(store, 1, 0)
    looks = [first.generated.image] + [
        matted_item(store, 1, index).generated.image for index in range(1, count)
    ]
    return [
        first.model_copy(update={"generated": first.generated.model_copy(update={"image": look})})
        for look in looks
    ]


def _accepted(matted: ImageMatted, minute: int) -> Envelope[Any]:
    envelope = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=matted, iou=0.97, checks=[]),
        event_id=f"{minute:032d}",
        sku_id=SKU,
        trace_id="t" * 32,
        producer="test",
    )
    return envelope.model_copy(update={"produced_at": T0 + timedelta(minutes=minute)})


def test_an_image_left_by_a_deletion_cut_short_is_swept_once_older_than_the_grace_period(
    s3_store: ObjectStore, s3_endpoint: str
) -> None:
    assert isinstance(s3_store, S3Store)
    store = DeleteFailsOnce(s3_store.bucket, "pfx", endpoint_url=s3_endpoint, uri_from="the test")
    manifests = ManifestStore(store, PREFIX)
    ctx = Context("trainstore", store, Settings(), StageMetrics("trainstore"), logging.getLogger("test"))
    patient = Trainstore(manifests, compact_after_parts=16)  # the default grace period: a day
    at_once = Trainstore(manifests, compact_after_parts=16, sweep_grace_s=0)
    renders = _renders(store, 4)
    item_id = renders[0].generated.item_id

    patient.accepted(_accepted(renders[0], 0), ctx)
    first_image = manifests.key(str(manifests.read_sku(SKU)[item_id].image))
    second = _accepted(renders[1], 1)
    with pytest.raises(TransientError):
        patient.accepted(second, ctx)  # the row is written, the first render's image not yet deleted
    patient.accepted(second, ctx)  # delivered again: nothing new to write
    assert first_image in stored(manifests, SKU, item_id)[0]

    # Replaced again, by a member with the default grace period: the first image is too young to go.
    patient.accepted(_accepted(renders[2], 2), ctx)
    images = stored(manifests, SKU, item_id)[0]
    row = manifests.read_sku(SKU)[item_id]
    assert sorted(images) == sorted([first_image, manifests.key(str(row.image))])

    # Once older than the grace period (0 s here), the next replacement sweeps it.
    at_once.accepted(_accepted(renders[3], 3), ctx)
    row = manifests.read_sku(SKU)[item_id]
    assert row.image_sha256 == renders[3].generated.image.sha256
    image, mask = manifests.key(str(row.image)), manifests.key(str(row.mask))
    assert stored(manifests, SKU, item_id) == ([image], [mask])
    store.read_checked(manifests.key(str(row.image)), str(row.image_sha256))


class CutShortThenCompacted(FileStore):
    """A file store whose first delete of a synthetic image fails as an outage does; once armed, the
    next delta written is compacted at once, as another member or ``skuforge dataset compact`` may."""

    failed = False
    compact: Callable[[], object] | None = None

    def _delete(self, key: str) -> None:
        if not self.failed and f"/images/{SKU}/synthetic/" in key:
            self.failed = True
            raise TransientError(f"cannot delete {self.uri_for(key)}")
        super()._delete(key)

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        super()._write(key, data, content_type)
        if self.compact is not None and f"/manifests/{SKU}/part-d-" in key:
            compact, self.compact = self.compact, None
            compact()


def test_a_sweep_whose_delta_another_compaction_took_leaves_the_event_stored(tmp_path: Path) -> None:
    """The sweep measures ages against the delta just written; a compaction running meanwhile deletes
    that delta, and its time was read as ObjectMissing: the event, stored, went to the DLQ as
    object_missing. The sweep is left to the item's next replacement instead."""
    store = CutShortThenCompacted(tmp_path / "store")
    manifests = ManifestStore(store, PREFIX)
    ctx = Context("trainstore", store, Settings(), StageMetrics("trainstore"), logging.getLogger("test"))
    trainstore = Trainstore(manifests, compact_after_parts=16, sweep_grace_s=0)
    renders = _renders(store, 3)
    item_id = renders[0].generated.item_id
    trainstore.accepted(_accepted(renders[0], 0), ctx)
    with pytest.raises(TransientError):
        trainstore.accepted(_accepted(renders[1], 1), ctx)
    trainstore.accepted(_accepted(renders[1], 1), ctx)
    left = stored(manifests, SKU, item_id)[0]
    assert len(left) == 2  # the second render's image, and the first's that the deletion left

    store.compact = lambda: manifests.compact(SKU)
    trainstore.accepted(_accepted(renders[2], 2), ctx)
    assert store.compact is None  # the compaction did run in between

    row = manifests.read_sku(SKU)[item_id]
    assert row.image_sha256 == renders[2].generated.image.sha256
    store.read_checked(manifests.key(str(row.image)), str(row.image_sha256))
