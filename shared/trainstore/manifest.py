"""The retraining store's manifests: one row per item, JSONL parts per SKU, compacted into one file.

Layout under the store's root (``SKUFORGE_TRAINSTORE_PREFIX``, see docs/architecture.md)::

    images/<sku_id>/<source: real|synthetic>/<item_id>.png
    masks/<sku_id>/<item_id>.png
    manifests/<sku_id>/part-c-<seq>.jsonl     the compacted manifest: every item of the SKU, once
    manifests/<sku_id>/part-d-<seq>-<id>.jsonl a delta written since: the rows of one event
    manifests/<sku_id>/columns-c-<seq>.json   the compacted part again, column by column (for loading)

A SKU's manifest is every delta numbered at or below the newest compacted part, then that part, then
the deltas with a higher sequence number, in order; a later row for an item replaces an earlier one,
except that a ``pending`` row never replaces a decision (the gate's ``correction.pending`` and the
console's ``correction.resolved`` are different topics, so they may arrive in either order).
Compaction writes the merged rows as a new compacted part *before* deleting what it merged, and
deletes exactly the deltas it read. A delta still there at or below the compacted part's number is
one it merged and has not deleted yet (a crash in between: read again before the part, which then
settles every row it had), or one a second writer numbered while the compaction ran, which it never
saw: that one's rows are kept, never skipped. Training code reads manifests only
(``load_manifest``), never lists or opens images: one small file per class after compaction, the
columnar copy (one JSON object of per-field arrays: parsing it is several times cheaper than
parsing one object per line, which is what lets two million items load in seconds).

Only the trainstore stage writes here, and ``skuforge dataset compact``. All the stage's topics are
keyed by ``sku_id`` with one partition count, but the group's assignor may give one partition number of
two topics to two members, and a member past its poll interval may still be writing: two writers of
one SKU must not lose each other's rows, which is why compaction deletes only what it read.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import Field

from schemas.common import Contract, SafeId, Sha256Hex
from schemas.envelope import derive_id
from shared.errors import ObjectMissing, TransientError
from shared.store import ObjectStore

__all__ = [
    "TRAINABLE",
    "ManifestRow",
    "ManifestStore",
    "Source",
    "Status",
    "decode_columns",
    "decode_rows",
    "encode_columns",
    "encode_rows",
    "merge_rows",
    "rows_to_columns",
]

Source = Literal["real", "synthetic"]
# reference: a usable real photo; accepted: passed the gate; approved: a person approved it.
# pending, rejected and unusable (a real photo the captioner could not use) are recorded, never trained on.
Status = Literal["reference", "accepted", "approved", "pending", "rejected", "unusable"]
TRAINABLE: frozenset[str] = frozenset({"reference", "accepted", "approved"})
_DECIDED: frozenset[str] = frozenset({"reference", "accepted", "approved", "rejected", "unusable"})

_COMPACTED = re.compile(r"^part-c-(\d{10})\.jsonl$")
_DELTA = re.compile(r"^part-d-(\d{10})-([0-9a-f]{32})\.jsonl$")
_COLUMNS = re.compile(r"^columns-c-(\d{10})\.json$")
COLUMNS_VERSION = 1
# Listings a read of one SKU's manifest tries while concurrent compactions delete parts under it.
READ_ATTEMPTS = 5


class ManifestRow(Contract):
    """One item of the retraining store; ``image`` and ``mask`` are keys under the store's root."""

    item_id: SafeId
    sku_id: SafeId
    category: str
    source: Source
    status: Status
    image: str | None = Field(default=None, description="key of the image; None when not stored")
    image_sha256: Sha256Hex | None = None
    mask: str | None = Field(default=None, description="key of the final mask (model or human)")
    mask_sha256: Sha256Hex | None = None
    width: int | None = None
    height: int | None = None
    caption: str = ""
    iou: float | None = None
    reasons: list[str] = Field(
        default_factory=list, description="failed gate checks, for pending/reviewed items"
    )
    reviewed_by: str | None = None
    decision: str | None = None
    adapter_id: str | None = None
    seed: int | None = None
    backend: str | None = None
    reference_photo_id: str | None = None
    trace_id: str | None = None

    @property
    def trainable(self) -> bool:
        """Whether a training set may use this item."""
        return self.status in TRAINABLE


def merge_rows(
    rows: Iterable[ManifestRow], into: dict[str, ManifestRow] | None = None
) -> dict[str, ManifestRow]:
    """Fold rows, oldest first, into item_id -> row; a pending row never replaces a decision."""
    merged = {} if into is None else into
    for row in rows:
        current = merged.get(row.item_id)
        if row.status == "pending" and current is not None and current.status in _DECIDED:
            continue
        merged[row.item_id] = row
    return merged


def encode_rows(rows: Iterable[ManifestRow]) -> bytes:
    """JSONL, one row per line, sorted by item_id and with default fields left out (small, stable)."""
    ordered = sorted(rows, key=lambda row: row.item_id)
    return b"".join(row.model_dump_json(exclude_defaults=True).encode() + b"\n" for row in ordered)


def decode_rows(data: bytes) -> list[ManifestRow]:
    """Parse a JSONL part written by ``encode_rows``, checking every row."""
    return [ManifestRow.model_validate_json(line) for line in data.splitlines() if line.strip()]


def rows_to_columns(rows: Iterable[ManifestRow]) -> dict[str, list[Any]]:
    """The rows, sorted by item_id, as one list of JSON values per ManifestRow field."""
    dumped = [row.model_dump(mode="json") for row in sorted(rows, key=lambda row: row.item_id)]
    return {name: [values[name] for values in dumped] for name in ManifestRow.model_fields}


def encode_columns(rows: Iterable[ManifestRow]) -> bytes:
    """The rows as one JSON object; a field that has one value in most rows is written once::

        {"version": 1, "rows": n, "columns": {field: [values by item_id]},
         "common": {field: [value, {row index: other value}]}}

    Most fields of a SKU are (nearly) the same on every row (sku_id, category, status, backend,
    adapter, reviewer...), so a large store parses into a few objects per item instead of twenty.
    """
    full = rows_to_columns(rows)
    count = len(full["item_id"])
    columns: dict[str, list[Any]] = {}
    common: dict[str, list[Any]] = {}
    for name, values in full.items():
        tally = Counter(json.dumps(value) for value in values)
        if not count or tally.most_common(1)[0][1] < 0.9 * count:
            columns[name] = values
            continue
        value = json.loads(tally.most_common(1)[0][0])
        common[name] = [value, {str(index): other for index, other in enumerate(values) if other != value}]
    document = {"version": COLUMNS_VERSION, "rows": count, "columns": columns, "common": common}
    return json.dumps(document, separators=(",", ":")).encode()


def decode_columns(data: bytes) -> dict[str, list[Any]]:
    """Parse what ``encode_columns`` wrote: every ManifestRow field as a column of the same length.

    A common value is one object repeated down its column: treat values as read-only.
    """
    parsed = json.loads(data)
    if parsed.get("version") != COLUMNS_VERSION:
        raise ValueError(f"columns file version {parsed.get('version')!r}, expected {COLUMNS_VERSION}")
    count: int = parsed["rows"]
    columns: dict[str, list[Any]] = parsed["columns"]
    for name, (value, others) in parsed["common"].items():
        column = [value] * count
        for index, other in others.items():
            column[int(index)] = other
        columns[name] = column
    return {name: columns[name] for name in ManifestRow.model_fields}


class ManifestStore:
    """Reads and writes the per-SKU manifests of a retraining store rooted at ``prefix`` in ``store``."""

    def __init__(self, store: ObjectStore, prefix: str = "") -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def key(self, relative: str) -> str:
        """The object-store key of a key relative to the retraining store's root."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _manifest_dir(self, sku_id: str) -> str:
        return self.key(f"manifests/{sku_id}/")

    def parts(self, sku_id: str) -> tuple[tuple[int, str] | None, list[tuple[int, str]]]:
        """The newest compacted part and every delta part there, as (sequence, key), oldest first.

        Deltas numbered at or below the compacted part come before it when read (``reading_order``).
        """
        compacted, deltas, _ = self._listing(sku_id)
        return compacted, deltas

    def _listing(
        self, sku_id: str
    ) -> tuple[tuple[int, str] | None, list[tuple[int, str]], list[tuple[int, str]]]:
        """(newest compacted part, every delta, every other file with a sequence number)."""
        directory = self._manifest_dir(sku_id)
        compacted: tuple[int, str] | None = None
        deltas: list[tuple[int, str]] = []
        others: list[tuple[int, str]] = []
        for key in self.store.list_keys(directory):
            name = key[len(directory) :]
            if match := _COMPACTED.match(name):
                seq = int(match.group(1))
                if compacted is None or seq > compacted[0]:
                    if compacted is not None:
                        others.append(compacted)
                    compacted = (seq, key)
                else:
                    others.append((seq, key))
            elif match := _DELTA.match(name):
                deltas.append((int(match.group(1)), key))
            elif match := _COLUMNS.match(name):
                others.append((int(match.group(1)), key))
        return compacted, sorted(deltas), others

    @staticmethod
    def reading_order(compacted: tuple[int, str] | None, deltas: list[tuple[int, str]]) -> list[str]:
        """The keys of ``parts`` in the order their rows are folded: the deltas at or below the
        compacted part's number (merged but not yet deleted, or written beside a compaction that never
        saw them), the compacted part, then the newer deltas."""
        if compacted is None:
            return [key for _, key in deltas]
        return (
            [key for seq, key in deltas if seq <= compacted[0]]
            + [compacted[1]]
            + [key for seq, key in deltas if seq > compacted[0]]
        )

    def columns_key(self, sku_id: str, seq: int) -> str:
        """Key of the columnar copy of the SKU's compacted part number ``seq``."""
        return self.key(f"manifests/{sku_id}/columns-c-{seq:010d}.json")

    def read_sku(self, sku_id: str) -> dict[str, ManifestRow]:
        """Every item of one SKU, item_id -> its current row.

        A compaction running meanwhile (the stage's own, or ``skuforge dataset compact``) may delete
        a part between the listing and its read; it wrote the merged part first, so a fresh listing
        has every row. A part that keeps vanishing is a ``TransientError`` (retried), never
        ``ObjectMissing``, which the stage would dead-letter as the event's fault.
        """
        return self._read(sku_id)[0]

    def _read(
        self, sku_id: str
    ) -> tuple[dict[str, ManifestRow], tuple[int, str] | None, list[tuple[int, str]], list[tuple[int, str]]]:
        """``read_sku``'s rows, with the listing they were read from (``_listing``)."""
        for _attempt in range(READ_ATTEMPTS):
            compacted, deltas, others = self._listing(sku_id)
            merged: dict[str, ManifestRow] = {}
            try:
                for key in self.reading_order(compacted, deltas):
                    merge_rows(decode_rows(self.store.get_bytes(key)), merged)
            except ObjectMissing:
                continue
            return merged, compacted, deltas, others
        raise TransientError(f"the manifest parts of {sku_id} kept changing while being read")

    def sku_ids(self) -> list[str]:
        """SKUs that have a manifest, sorted."""
        root = self.key("manifests/")
        return sorted({key[len(root) :].split("/", 1)[0] for key in self.store.list_keys(root)})

    def append(
        self, sku_id: str, rows: list[ManifestRow], *, current: dict[str, ManifestRow] | None = None
    ) -> str | None:
        """Write ``rows`` as the SKU's next delta part, leaving out rows the manifest already has.

        ``current`` is the SKU's manifest if the caller just read it. Returns the key written, or
        None when nothing was new (a redelivered event writes nothing).
        """
        current = self.read_sku(sku_id) if current is None else current
        fresh = [row for row in rows if current.get(row.item_id) != row]
        fresh = [row for row in fresh if merge_rows([row], dict(current)).get(row.item_id) == row]
        if not fresh:
            return None
        compacted, deltas = self.parts(sku_id)
        seq = max([compacted[0] if compacted else 0, *(delta[0] for delta in deltas)]) + 1
        body = encode_rows(fresh)
        key = self.key(f"manifests/{sku_id}/part-d-{seq:010d}-{derive_id(body.decode())}.jsonl")
        self.store.put_bytes(key, body, "application/x-ndjson")
        return key

    def compact(self, sku_id: str, *, min_deltas: int = 1) -> bool:
        """Merge the SKU's parts into one compacted part when there are at least ``min_deltas`` deltas.

        The new part is written before anything is deleted, and only what was read is deleted: a
        delta another writer puts meanwhile, whatever its number, stays and is read (``reading_order``).
        Returns whether it compacted.
        """
        merged, compacted, deltas, others = self._read(sku_id)
        if len(deltas) < max(1, min_deltas):
            return False
        seq = max([compacted[0] if compacted else 0, *(delta[0] for delta in deltas)])
        # The columnar copy first: a reader only uses it beside a compacted part of the same number.
        self.store.put_bytes(
            self.columns_key(sku_id, seq), encode_columns(merged.values()), "application/json"
        )
        new_part = self.key(f"manifests/{sku_id}/part-c-{seq:010d}.jsonl")
        self.store.put_bytes(new_part, encode_rows(merged.values()), "application/x-ndjson")
        for _, key in deltas:
            self.store.delete(key)
        # Older compacted parts (and their columnar copies) were read into this one.
        superseded = [*others, *([compacted] if compacted else [])]
        for number, key in superseded:
            if number < seq:
                self.store.delete(key)
        return True

    def iter_rows(self, sku_ids: Iterable[str] | None = None) -> Iterator[ManifestRow]:
        """Every current row of the given SKUs (all by default), SKU by SKU, each SKU once."""
        # A SKU named twice (``--sku A --sku A``) would yield its rows twice: doubled export lines.
        for sku_id in self.sku_ids() if sku_ids is None else dict.fromkeys(sku_ids):
            yield from self.read_sku(sku_id).values()
