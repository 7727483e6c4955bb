"""Review 46 of the trainstore: what a reviewer decided stays decided, also where the store kept another
render of the item over the decision."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from schemas.common import ObjectRef
from schemas.events import CaptionedPhoto, GateAccepted, SkuCaptioned
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared import keys
from shared.errors import BadInput, ObjectMissing
from shared.store import FileStore, sha256_hex
from shared.trainstore.manifest import ManifestRow, ManifestStore, decode_columns, encode_columns
from tests.support.gate import captioning_of, pending_of, resolved
from tests.support.memory import peak_traced_bytes
from tests.support.trainstore import (
    PREFIX,
    SKU,
    T0,
    WritesMeanwhile,
    gate_accepted,
    produced_envelope,
    stored,
    trainstore_stage,
    two_renders,
)


def test_a_gate_replay_never_stores_a_render_a_reviewer_rejected_beside_an_accepted_one(
    tmp_path: Path,
) -> None:
    """The gate accepted the first render and flagged the second; a reviewer rejected the second, which
    left the first in place but recorded nothing. The gate replayed after a threshold change then
    accepted the second render, later: it replaced the first, and the image the reviewer rejected was
    trained on. The rejection now stands against the gate's acceptance of that render, in every order,
    after a restart and a compaction, and the first render stays."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = two_renders(store)
    item_id = first.generated.item_id
    trainstore.accepted(gate_accepted(first, "a", 0), ctx)
    trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(second), "b", 5), ctx)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), "c", 60), ctx
    )
    assert manifests.read_sku(SKU)[item_id].image_sha256 == first.generated.image.sha256

    for attempt in range(2):
        restarted = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
        # The replay sends both renders' acceptances again, in the order they were matted.
        for matted, event_id, minute in ((first, "d", 120), (second, "e", 121)):
            replay = produced_envelope(
                GATE_ACCEPTED, GateAccepted(matted=matted, iou=0.97, checks=[]), event_id, minute
            )
            restarted.accepted(replay, ctx)
        row = manifests.read_sku(SKU)[item_id]
        assert (row.status, row.image_sha256) == ("accepted", first.generated.image.sha256), attempt
        (image_key,) = stored(manifests, SKU, item_id)[0]
        assert sha256_hex(store.get_bytes(image_key)) == first.generated.image.sha256, attempt
        manifests.compact(SKU)


def test_a_render_a_reviewer_rejected_stays_out_once_the_gate_accepted_another(tmp_path: Path) -> None:
    """A reviewer rejected the first render; the gate accepted a second, which replaced the rejection. The
    gate replayed then accepted the first render again, later than the second: it replaced the second and
    the rejected image was trained on. The row of the second now remembers the rejection."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = two_renders(store)
    item_id = first.generated.item_id
    trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(first), "a", 0), ctx)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, first, "reject"), "b", 60), ctx
    )
    trainstore.accepted(gate_accepted(second, "c", 90), ctx)
    assert manifests.read_sku(SKU)[item_id].image_sha256 == second.generated.image.sha256

    replay = gate_accepted(first, "d", 120)
    trainstore.accepted(replay, ctx)
    manifests.compact(SKU)
    Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16).accepted(replay, ctx)

    row = manifests.read_sku(SKU)[item_id]
    assert (row.status, row.image_sha256) == ("accepted", second.generated.image.sha256)
    (image_key,) = stored(manifests, SKU, item_id)[0]
    assert sha256_hex(store.get_bytes(image_key)) == second.generated.image.sha256


def test_a_later_approval_of_a_render_once_rejected_is_stored(tmp_path: Path) -> None:
    """Remembering a rejection keeps the gate out, not a reviewer: the later decision made wins."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = two_renders(store)
    item_id = first.generated.item_id
    trainstore.accepted(gate_accepted(first, "a", 0), ctx)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), "b", 60), ctx
    )
    approval = resolved(store, second, "approve_expected").model_copy(
        update={"decided_at": T0 + timedelta(minutes=90)}
    )
    trainstore.resolved(produced_envelope(CORRECTION_RESOLVED, approval, "c", 90), ctx)

    row = manifests.read_sku(SKU)[item_id]
    assert (row.status, row.image_sha256, row.rejected_renders) == (
        "approved",
        second.generated.image.sha256,
        [],
    )


def test_a_columnar_copy_written_before_rows_remembered_rejections_still_reads() -> None:
    """A compacted part's columnar copy from before ``rejected_renders`` reads, each row with none (a
    copy the loader cannot read is read again from its JSONL part, far slower)."""
    row = ManifestRow(item_id="gen-1", sku_id="SKU-1", category="can", source="synthetic", status="accepted")
    document = json.loads(encode_columns([row, row.model_copy(update={"item_id": "gen-2"})]))
    document["common"].pop("rejected_renders", None)
    document["columns"].pop("rejected_renders", None)
    columns = decode_columns(json.dumps(document).encode())
    assert columns["rejected_renders"] == [[], []]
    assert columns["rejected_renders"][0] is not columns["rejected_renders"][1]


def _noise_captioned(store: FileStore, photos: int, size_px: int) -> SkuCaptioned:
    """A captioning of SKU-001 with ``photos`` usable photos of noise (PNGs that hardly compress)."""
    rng = np.random.default_rng(46)
    mask = np.zeros((size_px, size_px), np.uint8)
    mask[size_px // 4 : -size_px // 4, size_px // 4 : -size_px // 4] = 255
    entries = []
    for index in range(photos):
        image = rng.integers(0, 256, (size_px, size_px, 3), dtype=np.uint8)
        entries.append(
            CaptionedPhoto(
                photo_id=f"p{index}",
                image=store.put_image(keys.photo_key(SKU, f"p{index}"), image),
                mask=store.put_image(keys.reference_mask_key(SKU, f"p{index}"), mask),
                usable=True,
            )
        )
    return captioning_of(1, entries)


def test_a_captioning_of_many_large_photos_holds_about_one_photo_at_a_time(tmp_path: Path) -> None:
    """Every photo of a ``sku.captioned`` was held in memory, as bytes, until all were written: up to 64
    photos of up to SKUFORGE_MAX_IMAGE_BYTES (50 MiB) each, gigabytes past the pod's 2 GiB limit, and
    an OOM-killed stage takes the event again, and again (no dead letter). Each photo is now checked
    and let go, and read again (checked against its sha256 again) when it is written."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    photos, size_px = 12, 600
    event = produced_envelope(SKU_CAPTIONED, _noise_captioned(store, photos, size_px), "a", 0)
    photo_bytes = size_px * size_px * 3

    peak = peak_traced_bytes(lambda: trainstore.captioned(event, ctx))

    rows = manifests.read_sku(SKU)
    assert sorted(row.status for row in rows.values()) == ["reference"] * photos
    for row in rows.values():
        assert sha256_hex(store.get_bytes(manifests.key(str(row.image)))) == row.image_sha256
    assert peak < 5 * photo_bytes, (
        f"peak {peak / 2**20:.1f} MiB for {photos} photos of {photo_bytes / 2**20:.1f} MiB"
    )


class _PhotoGoneOnSecondRead(FileStore):
    """A store where the SKU's photo p1 is gone once it has been read once (ingest withdrew it meanwhile)."""

    reads = 0

    def read_verified(self, ref: ObjectRef) -> bytes:
        if ref.uri.endswith(keys.photo_key(SKU, "p1")):
            self.reads += 1
            if self.reads > 1:
                raise ObjectMissing(ref.uri)
        return super().read_verified(ref)


def test_a_photo_gone_between_its_check_and_its_write_refuses_the_event_naming_it(tmp_path: Path) -> None:
    """A photo is read again as it is written: gone by then, the event is refused as it would have been
    when it was checked, naming the photo, and no row is written."""
    store = _PhotoGoneOnSecondRead(tmp_path / "store")
    _, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    event = produced_envelope(SKU_CAPTIONED, _noise_captioned(store, 3, 64), "a", 0)

    with pytest.raises(BadInput) as refused:
        trainstore.captioned(event, ctx)

    assert refused.value.reason == "object_missing"
    assert refused.value.detail.startswith("photo p1: ")
    assert manifests.read_sku(SKU) == {}


def test_a_photo_gone_when_its_copy_is_put_back_leaves_the_event_stored(tmp_path: Path) -> None:
    """Another member (a withdrawal: ingest deletes the store's copies, then the photo under incoming/)
    took a photo's copy after it was put and before its row was written: the row, once written, names a
    copy that is gone, and the photo is gone too, so it cannot be put back. Read again for that, the
    photo's absence dead-lettered an event whose rows were written; the SKU's next write settles the row
    (the withdrawal's marker), so it is logged and left."""
    store = WritesMeanwhile(tmp_path / "store", marker=f"/manifests/{SKU}/part-d-")
    _, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    captioning = _noise_captioned(store, 2, 64)
    photo = captioning.photos[0]

    def withdrawn_meanwhile() -> None:
        for key in manifests.stored_objects(SKU, "real", photo.photo_id):
            store.delete(key)
        store.delete(store.key_for(photo.image.uri))

    store.meanwhile = withdrawn_meanwhile
    trainstore.captioned(produced_envelope(SKU_CAPTIONED, captioning, "a", 0), ctx)

    assert store.meanwhile is None
    rows = manifests.read_sku(SKU)
    assert sorted(rows) == ["p0", "p1"]
    assert store.exists(manifests.key(str(rows["p1"].image)))
