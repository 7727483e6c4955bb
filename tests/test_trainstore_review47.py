"""Trainstore, review 47: a photo withdrawn while the stage writes it, what ``dataset stats`` says of
rejected renders, when a rejection was remembered, and a usable photo without a mask.

A captioning whose photo ingest withdrew between its check and its write is written again with the
withdrawal's marker; that retry judged its rows against the SKU's rows read before the withdrawal, so
the rows ingest had just withdrawn (an image generated from the photo) were written a second time, and
``skuforge_trainstore_items_withdrawn_total`` counted them as kept out by the stage.

``skuforge dataset stats`` counted an item's rejection only where the rejection is the item's row: a
render a reviewer rejected while another render of the item stays (its row's ``rejected_renders``) was
counted nowhere, and the stats read as if no reviewer had refused anything. Nor did a row say when a
render it remembers was rejected (``rejected_at`` now does; rows written before still read).

A photo its producer called usable but sent without a mask was recorded ``unusable``, out of every
training set, unlike a usable photo whose mask marks no pixel, which is stored without a mask.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.common import ObjectRef
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared import keys
from shared.store import FileStore, sha256_hex
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import decode_columns, decode_rows, encode_columns
from shared.trainstore.withdrawals import Withdrawals
from skuforge_cli.main import main as cli_main
from tests.support.gate import captioned, matted_item, pending_of, resolved
from tests.support.trainstore import (
    PREFIX,
    SKU,
    T0,
    accepted_then_rejected,
    gate_accepted,
    produced_envelope,
    trainstore_stage,
    two_renders,
)


class _ReadAgainAfter(FileStore):
    """A file store that runs ``meanwhile`` once, just before the second read of ``photo_key`` from
    when it is armed: the trainstore checks a photo, lets it go, and reads it again as it writes it
    (``StagedItem``); ``meanwhile`` is another process's work in between. None once run."""

    photo_key = ""
    reads = 0
    meanwhile: Callable[[], object] | None = None

    def read_verified(self, ref: ObjectRef) -> bytes:
        if self.meanwhile is not None and ref.uri.endswith(self.photo_key):
            self.reads += 1
            if self.reads == 2:
                meanwhile, self.meanwhile = self.meanwhile, None
                meanwhile()
        return super().read_verified(ref)


def test_a_photo_withdrawn_between_its_check_and_its_write_leaves_what_ingest_withdrew_as_written(
    tmp_path: Path,
) -> None:
    """Ingest withdraws photo p0 (its marker, the rows of p0 and of the image generated from it, their
    objects, then the photo under ``incoming/``) while a captioning of p0 is being written: the stage
    finds the photo gone and writes again with the marker. It wrote the generated image's withdrawn row
    a second time and counted it as a row it kept out itself; now that row is ingest's, once."""
    store = _ReadAgainAfter(tmp_path / "store")
    _, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    registry = CollectorRegistry()
    writer = Trainstore(manifests, compact_after_parts=16, registry=registry)
    event = captioned(store, 1, photos=2)
    writer.captioned(produced_envelope(SKU_CAPTIONED, event, "a", 0), ctx)
    generated = matted_item(store, 1, 0)  # generated from p0
    item_id = generated.generated.item_id
    writer.accepted(gate_accepted(generated, "b", 1), ctx)
    assert manifests.read_sku(SKU)[item_id].status == "accepted"

    def ingest_withdraws_p0() -> None:
        Withdrawals(manifests).withdraw(SKU, event.sku.category, ["p0"], by="skuforge ingest")
        store.delete(keys.photo_key(SKU, "p0"))

    store.photo_key, store.meanwhile = keys.photo_key(SKU, "p0"), ingest_withdraws_p0
    # Captioned again (a re-run): p0 with a new caption, read again as it is written.
    p0, *others = event.photos
    again = event.model_copy(update={"photos": [p0.model_copy(update={"caption": "a red can"}), *others]})
    writer.captioned(produced_envelope(SKU_CAPTIONED, again, "c", 2), ctx)

    assert store.meanwhile is None  # the withdrawal did come in between
    rows = manifests.read_sku(SKU)
    assert (rows["p0"].status, rows[item_id].status, rows["p1"].status) == (
        "withdrawn",
        "withdrawn",
        "reference",
    )
    _, deltas = manifests.parts(SKU)
    written = [
        row.item_id
        for _, key in deltas
        for row in decode_rows(store.get_bytes(key))
        if row.item_id == item_id
    ]
    assert written == [item_id, item_id], "accepted, then withdrawn by ingest: nothing more"
    # The stage kept out p0's new row itself; the generated image's row was ingest's withdrawal.
    withdrawn = {
        source: registry.get_sample_value("skuforge_trainstore_items_withdrawn_total", {"source": source})
        for source in ("real", "synthetic")
    }
    assert withdrawn == {"real": 1.0, "synthetic": 0.0}


def test_stats_count_the_renders_reviewers_rejected_beside_the_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gate accepted an item's first render and flagged the second, which a reviewer rejected: the
    first stays, its row remembering the rejected render. ``dataset stats`` said "accepted 1, rejected
    0"; it now counts that render in ``rejected_renders``, in the JSON lines and in the table."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = two_renders(store)
    trainstore.accepted(gate_accepted(first, "a", 0), ctx)
    trainstore.pending(produced_envelope(CORRECTION_PENDING, pending_of(second), "b", 5), ctx)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), "c", 60), ctx
    )
    assert manifests.read_sku(SKU)[first.generated.item_id].rejected_renders == [
        second.generated.image.sha256
    ]
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")

    assert cli_main(["dataset", "stats", "--json"]) == 0
    (line,) = map(json.loads, capsys.readouterr().out.splitlines())
    counts = (line["synthetic_accepted"], line["rejected"], line["rejected_renders"])
    assert counts == (1, 0, 1)

    assert cli_main(["dataset", "stats"]) == 0
    header, row, _ = capsys.readouterr().out.splitlines()
    table = dict(zip(header.split(), row.split(), strict=True))
    assert (table["accepted"], table["rejected"], table["rejected_renders"]) == ("1", "0", "1")


def test_a_remembered_rejection_records_when_it_was_made(tmp_path: Path) -> None:
    """A row remembered which renders reviewers rejected (``rejected_renders``) but not when. It now keeps
    each one's time (``rejected_at``, the rejection event's, UTC), whether the rejection was left out
    beside the render that stays or replaced by an acceptance of another render."""
    store, manifests, trainstore, ctx, first, second, rejection = accepted_then_rejected(tmp_path, "c")
    item_id = first.generated.item_id
    row = manifests.read_sku(SKU)[item_id]
    assert row.rejected_at == {second.generated.image.sha256: T0 + timedelta(minutes=60)}
    _, newest = manifests.parts(SKU)[1][-1]
    stored_line = json.loads(store.get_bytes(newest))
    assert stored_line["rejected_at"] == {second.generated.image.sha256: "2026-11-22T09:00:00Z"}
    trainstore.resolved(rejection, ctx)  # delivered again: the same row, nothing written
    assert len(manifests.parts(SKU)[1]) == 2

    # The other order: a rejection of the first render, replaced by the gate's acceptance of the second.
    other = tmp_path / "other"
    store, manifests, trainstore, ctx = trainstore_stage(other, compact_after_parts=16)
    first, second = two_renders(store)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, first, "reject"), "b", 60), ctx
    )
    trainstore.accepted(gate_accepted(second, "c", 90), ctx)
    manifests.compact(SKU)
    row = manifests.read_sku(SKU)[item_id]
    assert (row.status, row.rejected_renders) == ("accepted", [first.generated.image.sha256])
    assert row.rejected_at == {first.generated.image.sha256: T0 + timedelta(minutes=60)}
    loaded = load_manifest(store, prefix=PREFIX, trainable_only=False)
    (loaded_at,) = loaded.column("rejected_at")
    assert loaded_at == {first.generated.image.sha256: "2026-11-22T09:00:00Z"}
    with pytest.raises(TypeError):  # read-only: a common value is one mapping shared down the column
        loaded_at[first.generated.image.sha256] = "changed"
    # A row is the caller's (training code dumps rows as JSON lines): its times are a dict of its own.
    (loaded_row,) = list(loaded)
    assert json.loads(json.dumps(loaded_row))["rejected_at"] == loaded_at
    loaded_row["rejected_at"][first.generated.image.sha256] = "changed"
    assert loaded.column("rejected_at") == [{first.generated.image.sha256: "2026-11-22T09:00:00Z"}]


def test_rows_and_columnar_copies_from_before_rejection_times_still_read() -> None:
    """A stored row or columnar copy written before ``rejected_at`` reads, its remembered renders with
    no time."""
    sha = "a" * 64
    line = (
        b'{"item_id":"gen-1","sku_id":"SKU-1","category":"can","source":"synthetic","status":"accepted",'
        b'"rejected_renders":["' + sha.encode() + b'"]}'
    )
    (row,) = decode_rows(line + b"\n")
    assert (row.rejected_renders, row.rejected_at) == ([sha], {})
    document = json.loads(encode_columns([row, row.model_copy(update={"item_id": "gen-2"})]))
    for part in ("common", "columns"):
        document[part].pop("rejected_at", None)
    columns = decode_columns(json.dumps(document).encode())
    assert columns["rejected_at"] == [{}, {}]
    assert columns["rejected_at"][0] is not columns["rejected_at"][1]


def test_a_usable_photo_without_a_mask_is_stored_as_a_reference_without_one(tmp_path: Path) -> None:
    """A photo its producer calls usable but sends without a mask (another producer, an older captioner)
    was recorded ``unusable`` ("no mask") and left out of every training set, while a usable photo whose
    mask marks no pixel is stored without a mask: a real photo of the product for a classifier all the
    same. It is now stored so too, ``no_mask`` in its reasons, and exported."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    event = captioned(store, 1, photos=2)
    p0, p1, blurry = event.photos
    maskless = event.model_copy(update={"photos": [p0.model_copy(update={"mask": None}), p1, blurry]})
    trainstore.captioned(produced_envelope(SKU_CAPTIONED, maskless, "a", 0), ctx)

    rows = manifests.read_sku(SKU)
    assert (rows["p0"].status, rows["p0"].reasons, rows["p0"].mask) == ("reference", ["no_mask"], None)
    assert sha256_hex(store.get_bytes(manifests.key(str(rows["p0"].image)))) == p0.image.sha256
    assert (rows["p1"].status, rows["p-blurry"].status) == ("reference", "unusable")
    loaded = load_manifest(store, prefix=PREFIX)
    assert sorted(loaded.column("item_id")) == ["p0", "p1"]
