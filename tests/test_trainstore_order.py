"""An older event never undoes what a newer event decided for the same item.

Events of one item reach the trainstore in other orders than they were made: a redelivery, a rewind,
``skuforge dlq replay`` of an event that failed long ago. Before, the newest *write* won: an old
``gate.accepted`` of a first render, delivered again after a reviewer approved a second render of the
item, replaced the approval and its image; an old ``sku.captioned`` brought back a photo a newer
captioning found unusable. Each row now records when its event was produced (the envelope's
``produced_at``), and the later event wins, also after a restart and a compaction.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from schemas.events import GateAccepted, SkuCaptioned
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared.store import FileStore, sha256_hex
from shared.trainstore.manifest import (
    ManifestRow,
    ManifestStore,
    decode_columns,
    decode_rows,
    encode_columns,
)
from tests.support.gate import captioned, matted_item, pending_of, resolved
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


def _parts(store: FileStore) -> list[str]:
    return sorted(store.list_keys(f"{PREFIX}/manifests/{SKU}/"))


def _read_without(row: ManifestRow, column: str) -> list[Any]:
    """``column`` as read from a columnar copy of ``row`` written before rows had that column."""
    document = json.loads(encode_columns([row]))
    del document["common"][column]
    return decode_columns(json.dumps(document).encode())[column]


def test_an_old_acceptance_delivered_after_a_newer_approval_leaves_the_approval_and_its_image(
    tmp_path: Path,
) -> None:
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=2)
    first, second = two_renders(store)
    old_acceptance = gate_accepted(first, "a", 0)
    trainstore.accepted(old_acceptance, ctx)
    trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(second), "b", 5), ctx)
    approval = produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "approve_expected"), "c", 60)
    trainstore.resolved(approval, ctx)
    item_id = second.generated.item_id
    image_key = manifests.key(str(manifests.read_sku(SKU)[item_id].image))
    assert sha256_hex(store.get_bytes(image_key)) == second.generated.image.sha256
    assert stored(manifests, SKU, item_id)[0] == [image_key]  # the first render's image is gone

    # Redelivered, replayed from the DLQ, by a restarted stage (a fresh instance), after compaction.
    for attempt in range(2):
        restarted = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=2)
        restarted.accepted(old_acceptance, ctx)
        row = manifests.read_sku(SKU)[item_id]
        assert (row.status, row.image_sha256) == ("approved", second.generated.image.sha256), attempt
        assert sha256_hex(store.get_bytes(image_key)) == second.generated.image.sha256, attempt
        assert stored(manifests, SKU, item_id)[0] == [image_key], attempt
        manifests.compact(SKU)

    # A copy of the current event writes nothing at all.
    before = _parts(store)
    trainstore.resolved(approval, ctx)
    assert _parts(store) == before


def test_an_old_captioning_replayed_after_a_newer_one_changes_no_photo(tmp_path: Path) -> None:
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    older = captioned(store, 1, photos=2)
    # The newer captioning found p0 unusable and p1 without a product mask.
    newer = older.model_copy(
        update={
            "photos": [
                older.photos[0].model_copy(
                    update={"usable": False, "mask": None, "unusable_reason": "motion blur"}
                ),
                older.photos[1].model_copy(
                    update={"usable": False, "mask": None, "unusable_reason": "mask_full_frame"}
                ),
                *older.photos[2:],
            ]
        }
    )
    trainstore.captioned(produced_envelope(SKU_CAPTIONED, older, "a", 0), ctx)
    trainstore.captioned(produced_envelope(SKU_CAPTIONED, newer, "b", 10), ctx)
    before = manifests.read_sku(SKU)

    trainstore.captioned(produced_envelope(SKU_CAPTIONED, older, "a", 0), ctx)  # replayed

    rows = manifests.read_sku(SKU)
    assert rows == before
    assert (rows["p0"].status, rows["p0"].image) == ("unusable", None)
    assert stored(manifests, SKU, "p0", "real") == ([], [])
    assert rows["p1"].mask is None
    assert stored(manifests, SKU, "p1", "real") == ([manifests.key(str(rows["p1"].image))], [])


def test_an_old_captioning_replayed_after_a_newer_one_deletes_no_photo_it_found_unusable(
    tmp_path: Path,
) -> None:
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    newer = captioned(store, 1, photos=2)
    older: SkuCaptioned = newer.model_copy(
        update={
            "photos": [
                newer.photos[0].model_copy(update={"usable": False, "mask": None, "unusable_reason": "blur"}),
                newer.photos[1].model_copy(update={"mask": None, "unusable_reason": "no_product_found"}),
                *newer.photos[2:],
            ]
        }
    )
    trainstore.captioned(produced_envelope(SKU_CAPTIONED, newer, "b", 10), ctx)
    trainstore.captioned(produced_envelope(SKU_CAPTIONED, older, "a", 0), ctx)  # an old one, delivered late

    rows = manifests.read_sku(SKU)
    for photo_id in ("p0", "p1"):
        assert (rows[photo_id].status, rows[photo_id].mask is not None) == ("reference", True)
        row = rows[photo_id]
        assert stored(manifests, SKU, photo_id, "real") == (
            [manifests.key(str(row.image))],
            [manifests.key(str(row.mask))],
        )


def test_two_writers_of_one_sku_keep_the_newer_event_in_any_order(tmp_path: Path) -> None:
    """Two members both read the manifest before either wrote: the part written last is the older
    event's. The merge (and a compaction) keeps the newer event's row."""
    manifests = ManifestStore(FileStore(tmp_path), "ts")

    def row(status: str, minute: int) -> ManifestRow:
        return ManifestRow(
            item_id="gen-1",
            sku_id="SKU-1",
            category="can",
            source="synthetic",
            status=status,
            produced_at=T0 + timedelta(minutes=minute),
        )

    manifests.append("SKU-1", [row("approved", 60)], current={})
    manifests.append("SKU-1", [row("accepted", 0)], current={})
    assert manifests.read_sku("SKU-1")["gen-1"].status == "approved"
    manifests.compact("SKU-1")
    assert manifests.read_sku("SKU-1")["gen-1"].status == "approved"
    assert manifests.append("SKU-1", [row("accepted", 0)]) is None, "an older event's row is not written"


def test_an_old_acceptance_of_one_render_stands_after_a_newer_rejection_of_another(tmp_path: Path) -> None:
    """The rejection judged other pixels: the acceptance stands in either order (as when it came first)."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = two_renders(store)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), "b", 60), ctx
    )
    acceptance = gate_accepted(first, "a", 0)
    trainstore.accepted(acceptance, ctx)

    row = manifests.read_sku(SKU)[first.generated.item_id]
    assert (row.status, row.image_sha256) == ("accepted", first.generated.image.sha256)
    assert store.exists(manifests.key(str(row.image)))
    before = _parts(store)
    trainstore.accepted(acceptance, ctx)  # redelivered
    assert _parts(store) == before


def test_a_columnar_copy_written_before_rows_had_their_event_time_still_reads() -> None:
    old_row = ManifestRow(
        item_id="gen-1", sku_id="SKU-1", category="can", source="synthetic", status="accepted"
    )
    assert _read_without(old_row, "produced_at") == [None]


def test_a_replayed_gate_decision_never_overrides_a_reviewers_decision_of_the_same_render(
    tmp_path: Path,
) -> None:
    """The gate replayed after a threshold change accepts an item a reviewer had rejected, or approved
    with a corrected mask: the person's decision stands, whatever the times, in either arrival order
    and after a restart and a compaction."""
    store, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=2)
    rejected_item = matted_item(store, 1, 0)
    approved_item = matted_item(store, 1, 1, predicted="shifted")  # the reviewer corrected its mask
    human_mask = approved_item.generated.expected_mask
    for matted, decision, event_id in (
        (rejected_item, "reject", "e"),
        (approved_item, "approve_edited", "d"),
    ):
        trainstore = Trainstore(manifests, compact_after_parts=2)
        trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(matted), event_id, 0), ctx)
        payload = resolved(store, matted, decision, final_mask=human_mask)  # type: ignore[arg-type]
        trainstore.resolved(produced_envelope(CORRECTION_RESOLVED, payload, event_id, 60), ctx)
    # The gate replayed later: both items now pass its checks (same event ids: same input, key "decision").
    for attempt in range(2):
        restarted = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=2)
        for matted, event_id in ((rejected_item, "e"), (approved_item, "d")):
            replay = produced_envelope(
                GATE_ACCEPTED, GateAccepted(matted=matted, iou=0.97, checks=[]), event_id, 120
            )
            restarted.accepted(replay, ctx)
        rows = manifests.read_sku(SKU)
        rejected_row = rows[rejected_item.generated.item_id]
        assert (rejected_row.status, rejected_row.image) == ("rejected", None), attempt
        assert stored(manifests, SKU, rejected_item.generated.item_id) == ([], []), attempt
        approved_row = rows[approved_item.generated.item_id]
        assert (approved_row.status, approved_row.mask_sha256) == ("approved", human_mask.sha256), attempt
        mask_key = manifests.key(str(approved_row.mask))
        assert sha256_hex(store.get_bytes(mask_key)) == human_mask.sha256, attempt
        assert stored(manifests, SKU, approved_item.generated.item_id)[1] == [mask_key], attempt
        manifests.compact(SKU)


def test_a_reviewers_decision_delivered_after_a_newer_gate_replay_still_stands(tmp_path: Path) -> None:
    """The console's relay published the rejection late: the replayed acceptance got there first."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    matted = matted_item(store, 1, 0)
    trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(matted), "a", 0), ctx)
    replay = gate_accepted(matted, "a", 120)
    trainstore.accepted(replay, ctx)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, matted, "reject"), "b", 60), ctx
    )
    manifests.compact(SKU)
    trainstore.accepted(replay, ctx)  # redelivered

    row = manifests.read_sku(SKU)[matted.generated.item_id]
    assert (row.status, row.image) == ("rejected", None)
    assert stored(manifests, SKU, matted.generated.item_id) == ([], [])


def test_of_two_reviewers_decisions_the_later_made_wins_after_the_first_was_dated_past_a_gate_replay(
    tmp_path: Path,
) -> None:
    """A rejection (minute 60) delivered after a replayed acceptance (minute 120) is ordered after the
    acceptance. Before, its row carried only that later time, so a second reviewer's approval made at
    minute 90, after the rejection, was taken for the older decision and left out. The row now keeps the
    rejection's own time beside the time it is ordered by, and reviewers' decisions are compared by theirs."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    matted = matted_item(store, 1, 0)
    item_id = matted.generated.item_id
    trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(matted), "a", 0), ctx)
    trainstore.accepted(gate_accepted(matted, "a", 120), ctx)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, matted, "reject"), "b", 60), ctx
    )
    rejected_row = manifests.read_sku(SKU)[item_id]
    assert (rejected_row.status, rejected_row.produced_at) == ("rejected", T0 + timedelta(minutes=120))
    assert rejected_row.event_time == T0 + timedelta(minutes=60)

    approval = produced_envelope(CORRECTION_RESOLVED, resolved(store, matted, "approve_expected"), "c", 90)
    trainstore.resolved(approval, ctx)

    for attempt in range(2):  # and so it stays after a compaction, read by a restarted stage
        row = manifests.read_sku(SKU)[item_id]
        assert (row.status, row.event_time) == ("approved", T0 + timedelta(minutes=90)), attempt
        assert sha256_hex(store.get_bytes(manifests.key(str(row.image)))) == matted.generated.image.sha256
        restarted = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
        # A reviewer's decision made before the approval (a redelivery of the first) still loses.
        older = produced_envelope(CORRECTION_RESOLVED, resolved(store, matted, "reject"), "b", 60)
        restarted.resolved(older, ctx)
        assert manifests.read_sku(SKU)[item_id].status == "approved", attempt
        manifests.compact(SKU)


def test_a_row_written_before_rows_kept_their_events_own_time_reads_and_is_ordered_by_its_time() -> None:
    old_row = ManifestRow(
        item_id="gen-1", sku_id="SKU-1", category="can", source="synthetic", status="rejected", produced_at=T0
    )
    line = old_row.model_dump_json(exclude_defaults=True).encode()
    assert b"event_produced_at" not in line
    [read] = decode_rows(line)
    assert (read.event_produced_at, read.event_time) == (None, T0)
    assert _read_without(old_row, "event_produced_at") == [None]


def test_a_re_emitted_acceptance_of_a_first_render_leaves_a_reviewers_approval_of_the_second(
    tmp_path: Path,
) -> None:
    """The gate's stage, restarted, makes the first render's ``gate.accepted`` again under its event id
    with a new ``produced_at`` (shared/runtime.py ``_encode_outputs``), later than a reviewer's approval
    of the second render. Before, that copy replaced the approval and its image (the reviewer guard
    covered the same render only). A reviewer's decision now stands against the gate's acceptance of any
    render of the item, in either arrival order; only another reviewer's decision replaces it."""
    for re_emitted_first in (False, True):
        store, manifests, trainstore, ctx = trainstore_stage(
            tmp_path / str(re_emitted_first), compact_after_parts=16
        )
        first, second = two_renders(store)
        acceptance = GateAccepted(matted=first, iou=0.97, checks=[])
        re_emitted = produced_envelope(GATE_ACCEPTED, acceptance, "a", 120)
        approval = produced_envelope(
            CORRECTION_RESOLVED, resolved(store, second, "approve_expected"), "c", 60
        )
        if re_emitted_first:
            trainstore.accepted(re_emitted, ctx)
            trainstore.resolved(approval, ctx)
        else:
            trainstore.accepted(produced_envelope(GATE_ACCEPTED, acceptance, "a", 0), ctx)
            trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(second), "b", 5), ctx)
            trainstore.resolved(approval, ctx)
            trainstore.accepted(re_emitted, ctx)
        manifests.compact(SKU)
        trainstore.accepted(re_emitted, ctx)  # redelivered after a compaction

        row = manifests.read_sku(SKU)[first.generated.item_id]
        assert (row.status, row.image_sha256) == ("approved", second.generated.image.sha256), re_emitted_first
        image = store.get_bytes(manifests.key(str(row.image)))
        assert sha256_hex(image) == second.generated.image.sha256, re_emitted_first


def test_two_members_writing_one_item_at_once_leave_a_row_whose_objects_are_its_own(tmp_path: Path) -> None:
    """Before, objects were keyed by the item id: the acceptance's image and mask, put last, overwrote
    the approval's, whose row (the later event's) stayed the item's, so the row named bytes that were
    not its own and every export failed on their sha256. Keys now carry the bytes' sha256."""
    # Another member stores a reviewer's approval of the item's second render (its objects and its row)
    # after this member read the manifest for its acceptance of the first render, just before it puts
    # that render's image.
    store = WritesMeanwhile(tmp_path / "store", marker=f"/images/{SKU}/synthetic/")
    manifests = ManifestStore(store, PREFIX)
    accepting = Trainstore(manifests, compact_after_parts=16)
    _, _, approving, ctx = trainstore_stage(
        tmp_path, compact_after_parts=16, store=FileStore(tmp_path / "store")
    )
    first, second = two_renders(store)
    approval = produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "approve_edited"), "c", 60)
    store.meanwhile = lambda: approving.resolved(approval, ctx)
    accepting.accepted(gate_accepted(first, "a", 0), ctx)
    assert store.meanwhile is None  # the approval did come in between

    row = manifests.read_sku(SKU)[first.generated.item_id]
    assert (row.status, row.image_sha256) == ("approved", second.generated.image.sha256)
    assert row.image is not None and row.mask is not None
    store.read_checked(manifests.key(row.image), row.image_sha256)
    store.read_checked(manifests.key(row.mask), row.mask_sha256)


def test_an_approval_whose_objects_another_members_rejection_deleted_before_its_row_puts_them_back(
    tmp_path: Path,
) -> None:
    """The rejection read the manifest before the approval's row was there and deleted every object of
    the item, the approval's too (put, but not named yet); the approval, the later decision, then stood
    and named an image and a mask that were gone (every export failed on them). The writer now looks for
    its objects once its row is written and puts back those its row still names."""
    # Another member stores a reviewer's rejection of the item's first render (its row, then the deletion
    # of the item's objects) after this member put the objects of an approval of the second render and
    # before it writes that approval's row.
    store = WritesMeanwhile(tmp_path / "store", marker=f"/manifests/{SKU}/part-d-")
    manifests = ManifestStore(store, PREFIX)
    approving = Trainstore(manifests, compact_after_parts=16)
    _, _, rejecting, ctx = trainstore_stage(
        tmp_path, compact_after_parts=16, store=FileStore(tmp_path / "store")
    )
    first, second = two_renders(store)
    rejecting.accepted(gate_accepted(first, "a", 0), ctx)
    rejection = produced_envelope(CORRECTION_RESOLVED, resolved(store, first, "reject"), "b", 30)
    store.meanwhile = lambda: rejecting.resolved(rejection, ctx)
    approving.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "approve_edited"), "c", 60), ctx
    )
    assert store.meanwhile is None  # the rejection did come in between

    row = manifests.read_sku(SKU)[first.generated.item_id]
    assert (row.status, row.image_sha256) == ("approved", second.generated.image.sha256)
    assert row.image is not None and row.mask is not None
    store.read_checked(manifests.key(row.image), str(row.image_sha256))
    store.read_checked(manifests.key(row.mask), str(row.mask_sha256))
