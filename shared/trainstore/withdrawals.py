"""Withdrawn photos: real photos their owner took out of a SKU, and everything generated from them.

``skuforge ingest --withdraw-missing`` withdraws the photos an earlier ingest stored that are no longer
in the SKU's folder, and ``skuforge ingest --withdraw-sku`` every photo of a SKU (an old sku_id, a
delisted product); putting such a photo back and ingesting again reinstates it. A withdrawal is a
marker, written first, then rows, then deletions, each step idempotent, so running ingest again
finishes one that stopped half-way::

    withdrawals/<sku_id>/<photo_id>.json    {"photo_id", "withdrawn_at", "by"}: while it exists, the
                                            photo and its generated images are ``withdrawn``
    withdrawals/<sku_id>/<photo_id>.lifted  the last such marker, kept when the photo is reinstated:
                                            which withdrawal a reinstatement lifted (``withdrawn_at``)

While the marker exists, every row the trainstore stage writes for the photo (its ``reference`` from
any ``sku.captioned``, a replayed older one included) and for an image generated from it
(``accepted``, ``approved``, ``pending``; a reviewer's ``rejected`` stays) is written as
``withdrawn``, without objects, and the stage deletes their objects. A row another writer stored in
the same moment is withdrawn by the SKU's next write. The marker is the record, not the rows, so
nothing on the bus (an older consumer, a dead letter) can lose a withdrawal.

Only the retraining store's copies are deleted: the stages' own objects (``incoming/`` is deleted by
ingest; ``generated/``, ``masks/``) follow docs/ops.md's lifecycle rules. The correction console
closes its waiting tasks of such a photo as ``withdrawn`` (``services/console/withdrawn.py``), and,
from the ``.lifted`` records, those of the images the trainstore withdrew with a photo put back since.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from shared.errors import ObjectMissing
from shared.trainstore.manifest import ManifestRow, ManifestStore

__all__ = ["REASON", "Withdrawals", "photo_of", "withdrawable", "withdrawn_row", "withdrawn_rows"]

# The reason a withdrawn row records (appended to a generated item's reasons).
REASON = "photo_withdrawn"
_MARKERS = "withdrawals"
_LIFTED = ".lifted"  # not ".json": only markers say a photo is withdrawn
# What a generated image may be when its photo is withdrawn; a person's rejection stays a rejection.
_WITHDRAWABLE = frozenset({"accepted", "approved", "pending"})


class Withdrawals:
    """The withdrawal markers of a retraining store, and the rows and objects they take out."""

    def __init__(self, manifests: ManifestStore) -> None:
        self.manifests = manifests

    def _marker(self, sku_id: str, photo_id: str) -> str:
        return self.manifests.key(f"{_MARKERS}/{sku_id}/{photo_id}.json")

    def _lifted(self, sku_id: str, photo_id: str) -> str:
        return self.manifests.key(f"{_MARKERS}/{sku_id}/{photo_id}{_LIFTED}")

    def withdrawn_at(self, sku_id: str, photo_id: str) -> str:
        """When the photo's present withdrawal (or, once reinstated, the one lifted last) was made; ""
        when no record says (a store from before the lifted records)."""
        for key in (self._marker(sku_id, photo_id), self._lifted(sku_id, photo_id)):
            if at := self._recorded_time(key):
                return at
        return ""

    def lifted_at(self, sku_id: str, photo_id: str) -> str:
        """When the withdrawal a reinstatement of the photo lifted last was made; "" when none was."""
        return self._recorded_time(self._lifted(sku_id, photo_id))

    def _recorded_time(self, key: str) -> str:
        """The ``withdrawn_at`` of the record at ``key``; "" when there is none (or none readable)."""
        # Read once, its absence an answer: asked first whether it existed, a record an ingest deleted
        # in between (a reinstatement) made the read raise ObjectMissing, and the withdrawal failed.
        try:
            record = json.loads(self.manifests.store.get_bytes(key))
        except (ObjectMissing, ValueError, UnicodeDecodeError):
            return ""
        if isinstance(record, dict) and isinstance(record.get("withdrawn_at"), str):
            return str(record["withdrawn_at"])
        return ""

    def photo_ids(self, sku_id: str) -> set[str]:
        """The SKU's withdrawn photos."""
        prefix = self.manifests.key(f"{_MARKERS}/{sku_id}/")
        return {
            key.removeprefix(prefix).removesuffix(".json")
            for key in self.manifests.store.list_addressable(prefix)
            if key.endswith(".json")
        }

    def by_sku(self) -> dict[str, set[str]]:
        """Every withdrawn photo, by SKU id: one listing of the markers."""
        return self.records()[0]

    def records(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Every withdrawn photo, and every photo whose withdrawal a reinstatement lifted (once
        withdrawn again, in both), each by SKU id: one listing of the records (the console's sweep)."""
        prefix = self.manifests.key(f"{_MARKERS}/")
        withdrawn: dict[str, set[str]] = {}
        lifted: dict[str, set[str]] = {}
        for key in self.manifests.store.list_addressable(prefix):
            sku_id, sep, name = key.removeprefix(prefix).partition("/")
            if not sep or "/" in name:
                continue
            for suffix, photos in ((".json", withdrawn), (_LIFTED, lifted)):
                if name.endswith(suffix):
                    photos.setdefault(sku_id, set()).add(name.removesuffix(suffix))
        return withdrawn, lifted

    def withdraw(self, sku_id: str, category: str, photo_ids: Iterable[str], *, by: str) -> list[ManifestRow]:
        """Withdraw ``photo_ids`` of the SKU: markers (a photo's marker, once written, is kept: a run
        again is the same withdrawal), then the rows (a real ``withdrawn`` row for each photo, known to
        the store or not, and one for each image generated from it), then every retraining-store object
        of those items. Returns the rows written (none when run again)."""
        photo_ids = sorted(set(photo_ids))
        at = datetime.now(UTC).isoformat()
        for photo_id in photo_ids:
            marker = self._marker(sku_id, photo_id)
            if self._recorded_time(marker):
                # Withdrawn already (a run stopped half-way, run again): the same withdrawal, so its
                # record of when and by whom stays; rewritten, it took the time of the last run.
                continue
            record = {"photo_id": photo_id, "withdrawn_at": at, "by": by}
            self.manifests.store.put_bytes(marker, json.dumps(record).encode())
        current = self.manifests.read_sku(sku_id)
        rows = withdrawn_rows(current, set(photo_ids))
        for photo_id in photo_ids:
            if photo_id not in current:  # not captioned yet: the row makes the stats say so
                rows.append(
                    ManifestRow(
                        item_id=photo_id,
                        sku_id=sku_id,
                        category=category,
                        source="real",
                        status="withdrawn",
                        reasons=[REASON],
                    )
                )
        changed = [row for row in rows if current.get(row.item_id) != row]
        if changed:
            self.manifests.append(sku_id, changed, current=current)
        # Every time, not only when rows changed: a run stopped between the rows and the deletions
        # deletes them when run again.
        merged = {**current, **{row.item_id: row for row in changed}}
        self.manifests.delete_objects(
            sku_id,
            [
                (row.source, row.item_id)
                for row in merged.values()
                if row.status == "withdrawn" and photo_of(row) in photo_ids
            ],
        )
        return changed

    def reinstate(self, sku_id: str, photo_ids: Iterable[str]) -> None:
        """Lift the withdrawal of ``photo_ids``: the next ``sku.captioned`` that has one makes it a
        reference again (the images generated from it before stay withdrawn)."""
        for photo_id in photo_ids:
            marker = self._marker(sku_id, photo_id)
            # Read once: asked first whether it existed, a marker another ingest's reinstatement
            # deleted in between made the read raise ObjectMissing.
            try:
                record = self.manifests.store.get_bytes(marker)
            except ObjectMissing:
                record = None
            if record is not None:
                # Kept, so that a run stopped after this still knows which withdrawal it lifted.
                self.manifests.store.put_bytes(self._lifted(sku_id, photo_id), record)
            self.manifests.store.delete(marker)


def photo_of(row: ManifestRow) -> str | None:
    """The photo a row is (real) or was generated from (synthetic)."""
    return photo_of_item(row.source, row.item_id, row.reference_photo_id)


def photo_of_item(source: str, item_id: str, reference_photo_id: str | None) -> str | None:
    """``photo_of`` from a row's fields (the loader reads them as columns)."""
    return item_id if source == "real" else reference_photo_id


def withdrawable(row: ManifestRow, photo_ids: set[str]) -> bool:
    """Whether ``row`` is of a photo of ``photo_ids``, or of an image generated from one, and must be
    withdrawn: it is not yet, and it is not a person's rejection (an unusable real photo is)."""
    if row.status == "withdrawn" or photo_of(row) not in photo_ids:
        return False
    return row.source == "real" or row.status in _WITHDRAWABLE


def withdrawn_rows(rows: Mapping[str, ManifestRow], photo_ids: set[str]) -> list[ManifestRow]:
    """The ``withdrawn`` rows replacing those of ``rows`` that ``withdrawable`` picks, by item id."""
    return [withdrawn_row(row) for _, row in sorted(rows.items()) if withdrawable(row, photo_ids)]


def withdrawn_row(row: ManifestRow) -> ManifestRow:
    """``row`` once its photo is withdrawn: what it was, without its objects."""
    if row.status == "withdrawn":
        return row
    return row.model_copy(
        update={
            "status": "withdrawn",
            "image": None,
            "image_sha256": None,
            "mask": None,
            "mask_sha256": None,
            "reasons": [*row.reasons, REASON],
        }
    )
