"""Trainstore, review 47: a photo withdrawn while the stage writes it, what ``dataset stats`` says of
rejected renders, when a rejection was remembered, and a usable photo without a mask.

A captioning whose photo ingest withdrew between its check and its write is written again with the
withdrawal's marker; that retry judged its rows against the SKU's rows read before the withdrawal, so
the rows ingest had just withdrawn (an image generated from the photo) were written a second time, and
``skuforge_trainstore_items_withdrawn_total`` counted them as kept out by the stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from schemas.common import ObjectRef
from schemas.events import GateAccepted
from schemas.topics import GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared import keys
from shared.store import FileStore
from shared.trainstore.manifest import decode_rows
from shared.trainstore.withdrawals import Withdrawals
from tests.support.gate import captioned, matted_item
from tests.support.trainstore import SKU, produced_envelope, trainstore_stage


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
    writer.accepted(
        produced_envelope(GATE_ACCEPTED, GateAccepted(matted=generated, iou=0.97, checks=[]), "b", 1), ctx
    )
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
