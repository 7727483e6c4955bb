"""Review 46 of the trainstore: what a reviewer decided stays decided, also where the store kept another
render of the item over the decision."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.envelope import Envelope
from schemas.events import GateAccepted, ImageMatted
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.store import FileStore, sha256_hex
from shared.trainstore.manifest import ManifestRow, ManifestStore, decode_columns, encode_columns
from tests.support.gate import matted_item, pending_of, resolved
from tests.support.trainstore import PREFIX, stored, trainstore_stage

SKU = "SKU-001"
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def _envelope(topic: Any, payload: Any, event_id: str, minute: int) -> Envelope[Any]:
    """An event produced ``minute`` minutes after T0."""
    envelope = make_envelope(
        topic, payload, event_id=event_id * 32, sku_id=SKU, trace_id="t" * 32, producer="test"
    )
    return envelope.model_copy(update={"produced_at": T0 + timedelta(minutes=minute)})


def _renders(store: FileStore) -> tuple[ImageMatted, ImageMatted]:
    """Two renders of one item (a variant rendered again from a changed scene library keeps its id)."""
    first = matted_item(store, 1, 0)
    other_look = matted_item(store, 1, 1).generated.image
    second = first.model_copy(update={"generated": first.generated.model_copy(update={"image": other_look})})
    return first, second


def test_a_gate_replay_never_stores_a_render_a_reviewer_rejected_beside_an_accepted_one(
    tmp_path: Path,
) -> None:
    """The gate accepted the first render and flagged the second; a reviewer rejected the second, which
    left the first in place but recorded nothing. The gate replayed after a threshold change then
    accepted the second render, later: it replaced the first, and the image the reviewer rejected was
    trained on. The rejection now stands against the gate's acceptance of that render, in every order,
    after a restart and a compaction, and the first render stays."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = _renders(store)
    item_id = first.generated.item_id
    trainstore.accepted(
        _envelope(GATE_ACCEPTED, GateAccepted(matted=first, iou=0.97, checks=[]), "a", 0), ctx
    )
    trainstore.pending(_envelope(CORRECTION_PENDING, pending_of(second), "b", 5), ctx)
    trainstore.resolved(_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), "c", 60), ctx)
    assert manifests.read_sku(SKU)[item_id].image_sha256 == first.generated.image.sha256

    for attempt in range(2):
        restarted = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
        # The replay sends both renders' acceptances again, in the order they were matted.
        for matted, event_id, minute in ((first, "d", 120), (second, "e", 121)):
            replay = _envelope(
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
    first, second = _renders(store)
    item_id = first.generated.item_id
    trainstore.pending(_envelope(CORRECTION_PENDING, pending_of(first), "a", 0), ctx)
    trainstore.resolved(_envelope(CORRECTION_RESOLVED, resolved(store, first, "reject"), "b", 60), ctx)
    trainstore.accepted(
        _envelope(GATE_ACCEPTED, GateAccepted(matted=second, iou=0.97, checks=[]), "c", 90), ctx
    )
    assert manifests.read_sku(SKU)[item_id].image_sha256 == second.generated.image.sha256

    replay = _envelope(GATE_ACCEPTED, GateAccepted(matted=first, iou=0.97, checks=[]), "d", 120)
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
    first, second = _renders(store)
    item_id = first.generated.item_id
    trainstore.accepted(
        _envelope(GATE_ACCEPTED, GateAccepted(matted=first, iou=0.97, checks=[]), "a", 0), ctx
    )
    trainstore.resolved(_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), "b", 60), ctx)
    approval = resolved(store, second, "approve_expected").model_copy(
        update={"decided_at": T0 + timedelta(minutes=90)}
    )
    trainstore.resolved(_envelope(CORRECTION_RESOLVED, approval, "c", 90), ctx)

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
