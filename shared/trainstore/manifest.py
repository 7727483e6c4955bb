"""The retraining store's manifests: one row per item, JSONL parts per SKU, compacted into one file.

Layout under the store's root (``SKUFORGE_TRAINSTORE_PREFIX``, see docs/architecture.md)::

    images/<sku_id>/<source: real|synthetic>/<item_id>-<sha256[:16]>.png   (``content_keys``)
    masks/<sku_id>/<item_id>-<sha256[:16]>.png
    manifests/<sku_id>/part-d-<seq>-<id>.jsonl     a delta: the rows of one event
    manifests/<sku_id>/part-c-<seq>-<id>.jsonl     a compacted part: every item of the SKU, once
    manifests/<sku_id>/columns-c-<seq>-<id>.json   that compacted part again, column by column

Every row read has a stamp, the delta it was written in (``<seq>-<id>``; a compacted part keeps each
row's stamp). A SKU's manifest is every part there, in any order: per item, a decision beats a
``pending`` row (the gate's ``correction.pending`` and the console's ``correction.resolved`` are
different topics, so they may arrive in either order), then the row of the later event (its
``produced_at``, the envelope's: a redelivered, rewound or DLQ-replayed old event arrives after newer
ones and must not undo them; a row from before rows recorded it loses to any row that has one), then
the row with the later stamp (copies). The trainstore stage may date a row later than its event, so
that it outranks a row it has to beat (``services/trainstore/stage.py``, ``_dated``); such a row keeps
its event's own time in ``event_produced_at``. Because the result does not depend on the order parts are
read in, two writers of one SKU cannot undo each other: all the stage's topics are keyed by
``sku_id`` with one partition count, but the group's assignor may give one partition number of two
topics to two members, and a member past its poll interval may still be writing. Both may number
a delta alike (each lists, then takes the next number); both may compact at once. So a compaction
names its part by its content too (two compactions never replace each other's part), writes it
before deleting anything, and deletes exactly the parts it read; a crash in between leaves parts
that read again to the same rows.

Training code reads manifests only (``load_manifest``), never lists or opens images: one small file
per class after compaction, the columnar copy (one JSON object of per-field arrays: parsing it is
several times cheaper than parsing one object per line, which is what lets two million items load in
seconds). Only the trainstore stage writes here, ``skuforge dataset compact``, and ``skuforge ingest
--withdraw-missing`` (``shared/trainstore/withdrawals.py``); ``skuforge dataset sweep`` deletes objects
no row names (``shared/trainstore/sweep.py``). Parts written
before the content-named layout (``part-c-<seq>.jsonl``, no stamps) still read: their rows are
stamped as written just before any delta of their number.

An object's key names its bytes (their sha256), so a row always names bytes that match it: keyed by
the item id, two members writing one item at once could leave one's bytes under the other's row.
Rows written before keep naming ``images/<sku_id>/<source>/<item_id>.png`` and
``masks/<sku_id>/<item_id>.png`` (``object_keys``), which still read, and are deleted with the item's
other objects (``ManifestStore.stored_objects``).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, TypeAdapter, ValidationError

from schemas.common import (
    NOT_ONE_LINE,
    READ_FROM_TOPIC,
    Contract,
    OneLineText,
    SafeId,
    Sha256Hex,
    escaped_when_read,
    printable_ascii,
)
from schemas.envelope import derive_id
from shared.config import ConfigError
from shared.errors import BadInput, ObjectMissing, TransientError
from shared.store import ObjectStore, digest_key

__all__ = [
    "TRAINABLE",
    "ManifestRow",
    "ManifestStore",
    "Source",
    "Status",
    "content_keys",
    "decode_columns",
    "decode_rows",
    "encode_columns",
    "encode_rows",
    "merge_rows",
    "object_keys",
    "rows_to_columns",
    "stands",
]

Source = Literal["real", "synthetic"]
# reference: a usable real photo; accepted: passed the gate; approved: a person approved it.
# pending, rejected and unusable (a real photo the captioner could not use) are recorded, never trained on;
# withdrawn: a real photo its owner removed (skuforge ingest --withdraw-missing), or an image generated
# from one; its objects are deleted.
Status = Literal["reference", "accepted", "approved", "pending", "rejected", "unusable", "withdrawn"]
TRAINABLE: frozenset[str] = frozenset({"reference", "accepted", "approved"})
_DECIDED: frozenset[str] = TRAINABLE | {"rejected", "unusable", "withdrawn"}

# The id is optional in compacted parts and their columnar copies: parts of the older layout have none.
# [0-9], not \d: \d matches any script's digits and int() reads them, so a stray file named with
# Arabic-Indic digits was read as a part.
_COMPACTED = re.compile(r"part-c-([0-9]{10})(?:-([0-9a-f]{32}))?\.jsonl")
_DELTA = re.compile(r"part-d-([0-9]{10})-([0-9a-f]{32})\.jsonl")
_COLUMNS = re.compile(r"columns-c-([0-9]{10})(?:-([0-9a-f]{32}))?\.json")
# The field of a compacted part's line that holds the row's stamp (not a ManifestRow field).
_STAMP_FIELD = "written"
_STAMP = re.compile(r"[0-9]{10}-(?:[0-9a-f]{32})?")
_STAMPED_LINE = re.compile(rb'^\{"written":"([0-9]{10}-(?:[0-9a-f]{32})?)",')
COLUMNS_VERSION = 1
# The ManifestRow fields added since the first columnar copies (of COLUMNS_VERSION 1) were written: only
# these may be missing from a copy (``decode_columns``). Every other field's default was filled in for
# a missing column too, so a damaged copy without its images or sizes read as rows without them. A field
# added to ManifestRow goes here (tests/test_trainstore_review49.py fails until it is decided).
_ADDED_SINCE_COLUMNS = frozenset(
    {"image_sha256", "mask_sha256", "produced_at", "event_produced_at", "rejected_renders", "rejected_at"}
)
# Listings a read of one SKU's manifest tries while concurrent compactions delete parts under it.
READ_ATTEMPTS = 5
# The event time of a row that records none: before any event's.
_NO_TIME = datetime.min.replace(tzinfo=UTC)
# Strict writer, tolerant reader, as for events (docs/delivery.md, "Versioning"): a row built here
# refuses an unknown field, but a stored row keeps one. During a rolling upgrade an older pod reads a
# newer one's rows (they were all manifest_unreadable to it) and writes them back, compacted or
# withdrawn, with the field: dropped, a compaction would lose what the newer version decides by.
_READ_EXTRA: Literal["allow"] = "allow"
# What ``digest_key`` adds to an object's key (``content_keys``).
_DIGEST_SUFFIX = re.compile(r"-[0-9a-f]{16}\.png")
# A row's caption (``ManifestRow.caption``), read escaped as a stored row's is: also what a columnar copy's
# captions are read as (``decode_columns``).
_Caption = Annotated[OneLineText, escaped_when_read(sys.maxsize)]
_CAPTION = TypeAdapter(_Caption)


class ManifestRow(Contract):
    """One item of the retraining store; ``image`` and ``mask`` are keys under the store's root.

    Built here, a row with an unknown field is an error; read from the store, a field a newer version
    added is kept and written back with the row (``_read_row``), so old and new pods share a store.
    """

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
    # A photo's caption or a generated image's prompt, one line as those are (they refuse control
    # characters, line separators and bidirectional controls): a row took any, and another writer's U+202E
    # or newline went on to exports and training captions. A row stored before is read with each escaped
    # (``_read_row``), whatever its length: rows older than the events' bounds may be longer than an event
    # now carries, and refused, their whole part would no longer read.
    caption: _Caption = ""
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
    produced_at: AwareDatetime | None = Field(
        default=None,
        description="the time the row is ordered by: when the event that wrote the row was produced (its "
        "envelope's produced_at), or a later time where the row had to outrank a row dated later (a "
        "reviewer's decision against the gate's replayed acceptance); of two rows of an item, the later "
        "wins; None in rows written before rows recorded it",
    )
    event_produced_at: AwareDatetime | None = Field(
        default=None,
        description="when the event that wrote the row was produced, where produced_at was moved later; "
        "None where the two are the same (most rows, and rows written before rows kept it): event_time",
    )
    rejected_renders: list[Sha256Hex] = Field(
        default_factory=list,
        description="sha256 of the item's other renders a reviewer rejected (a rejection that left an "
        "accepted or approved render in place, or a rejected row this one replaced): the gate's acceptance "
        "of one of them never replaces the row; empty in most rows, and in rows written before it",
    )
    rejected_at: dict[Sha256Hex, AwareDatetime] = Field(
        default_factory=dict,
        description="when each render of rejected_renders was rejected (the produced_at, UTC, of the "
        "reviewer's rejection event); none for a render remembered before rows recorded it, and empty in "
        "rows written before it",
    )

    @property
    def event_time(self) -> datetime | None:
        """When the event that wrote the row was produced, whatever time the row is ordered by: what
        two reviewers' decisions of an item are compared by (the later one made wins)."""
        return self.event_produced_at or self.produced_at

    @property
    def trainable(self) -> bool:
        """Whether a training set may use this item."""
        return self.status in TRAINABLE


def merge_rows(
    rows: Iterable[ManifestRow], into: dict[str, ManifestRow] | None = None
) -> dict[str, ManifestRow]:
    """Fold rows, oldest written first, into item_id -> row; a pending row never replaces a decision,
    nor a row of an older event one of a newer event (``stands``)."""
    merged = {} if into is None else into
    for row in rows:
        if stands(row, merged.get(row.item_id)):
            merged[row.item_id] = row
    return merged


def stands(row: ManifestRow, current: ManifestRow | None) -> bool:
    """Whether ``row``, written now, would be its item's row in place of ``current`` (the module doc)."""
    return current is None or _precedence("", row) >= _precedence("", current)


def _precedence(stamp: str, row: ManifestRow) -> tuple[bool, datetime, str]:
    """Of two rows of an item, the one with the greater precedence is the item's row.

    The event's time, not the order of writes: writes follow deliveries, and a redelivered or replayed
    event comes after newer ones. The time travels in the row, so the order holds across restarts,
    compactions and a second writer, which a stage's memory of what it saw would not.
    """
    return (row.status in _DECIDED, row.produced_at or _NO_TIME, stamp)


def encode_rows(rows: Iterable[ManifestRow]) -> bytes:
    """JSONL, one row per line, sorted by item_id and with default fields left out (small, stable)."""
    ordered = sorted(rows, key=lambda row: row.item_id)
    return b"".join(_row_json(row) + b"\n" for row in ordered)


def _row_json(row: ManifestRow) -> bytes:
    """One row as a JSON object, default fields left out; the fields a newer version wrote that this
    one does not know (``_read_row``) follow, as they were read."""
    fields = row.model_dump_json(exclude_defaults=True).encode()
    if not row.model_extra:
        return fields
    unknown = json.dumps(row.model_extra, separators=(",", ":"), ensure_ascii=False).encode()
    return fields[:-1] + b"," + unknown[1:]


def _read_row(data: bytes) -> ManifestRow:
    """One stored row. A field this version does not know (a newer version's) is kept, not refused,
    and written back with the row (``encode_rows``); it is not a column of ``load_manifest``'s. A known
    field that does not validate (a mistyped value, an unknown status) is still a ``ValidationError``;
    a caption stored before it was ruled one line is read escaped (``READ_FROM_TOPIC``)."""
    return ManifestRow.model_validate_json(data, extra=_READ_EXTRA, context=READ_FROM_TOPIC)


class ManifestUnreadable(BadInput):
    """A part of a SKU's manifest holds a row that does not read as a ``ManifestRow``. Before, a
    pydantic traceback from ``dataset stats``, a usage error from ``export``, and every later event of
    the SKU dead-lettered as a handler error, none naming the part. ``then`` is what to do once the
    part is fixed: by default the trainstore stage's (its dead letters); a command says its own."""

    def __init__(
        self, uri: str, exc: ValidationError, then: str = "replay the dead letters (skuforge dlq replay)"
    ) -> None:
        self.uri, self.error = uri, exc
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(row)"
        super().__init__(
            "manifest_unreadable",
            f"{uri} holds a row that is not a manifest row ({where}: {error['msg']}); restore that part "
            f"from a backup or remove the row, then {then}",
        )


def decode_rows(data: bytes) -> list[ManifestRow]:
    """Parse a JSONL part written by ``encode_rows``, checking every row."""
    return [_read_row(line) for line in data.splitlines() if line.strip()]


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

    A common value is one object repeated down its column: treat values as read-only. ``ValueError``
    for bytes that are not such a document (cut short, or another version's) or whose columns do not
    hold one value per row.
    """
    parsed = json.loads(data)
    version = parsed.get("version") if isinstance(parsed, dict) else None
    if version != COLUMNS_VERSION:
        raise ValueError(f"columns file version {version!r}, expected {COLUMNS_VERSION}")
    try:
        count: int = parsed["rows"]
        columns: dict[str, list[Any]] = parsed["columns"]
        # A column of another length than the rows put every row after its gap out of step (or stopped
        # load_manifest with zip()'s error, naming nothing).
        for name, column in columns.items():
            if not isinstance(column, list) or len(column) != count:
                raise ValueError(f"its column {name!r} is not a list of its {count} rows' values")
        for name, (value, others) in parsed["common"].items():
            column = [value] * count
            for index, other in others.items():
                if not 0 <= int(index) < count:  # column[-1] would be the last row's
                    raise IndexError(f"row {index} of {count} in common value {name!r}")
                column[int(index)] = other
            columns[name] = column
        _escape_captions(columns["caption"])
        # A field added since the copy was written holds its default in every row. Any other column is
        # in every copy; one without it is damaged (KeyError: its part is read).
        return {
            name: columns[name]
            if name in columns or name not in _ADDED_SINCE_COLUMNS
            else [field.get_default(call_default_factory=True) for _ in range(count)]
            for name, field in ManifestRow.model_fields.items()
        }
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"not a columnar manifest: {exc!r}") from exc


def _escape_captions(captions: list[Any]) -> None:
    """Read a columnar copy's captions as its part's rows read (``_read_row``): a copy compacted before
    captions were ruled one line holds a U+202E or a newline as written, and handed it to training
    until the SKU was compacted again. Only a caption holding such a character (``NOT_ONE_LINE``, what
    the caption's type escapes) is validated, so a store of plain captions pays one pass over them all.
    A caption that is no text is a ``ValidationError`` (a ``ValueError``): the JSONL part is read."""
    joined = "".join(captions)
    # Printable ASCII holds none of NOT_ONE_LINE's characters, and its two checks in C take about half the
    # time of the scan (a store of plain captions is the common case).
    if printable_ascii(joined) or not NOT_ONE_LINE.search(joined):
        return
    for index, caption in enumerate(captions):
        if NOT_ONE_LINE.search(caption):
            captions[index] = _CAPTION.validate_python(caption, context=READ_FROM_TOPIC)


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

    def parts(self, sku_id: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """The SKU's compacted parts (one, or more while compactions overlap) and delta parts, as
        (sequence, key), in sequence order. Their rows merge the same in any order (the module doc)."""
        compacted, deltas, _ = self._listing(sku_id)
        return [(part.seq, part.key) for part in compacted], [(part.seq, part.key) for part in deltas]

    def _listing(self, sku_id: str) -> tuple[list[_Part], list[_Part], list[_Part]]:
        """(compacted parts, deltas, columnar copies) of the SKU, each sorted by stamp."""
        directory = self._manifest_dir(sku_id)
        found: dict[re.Pattern[str], list[_Part]] = {_COMPACTED: [], _DELTA: [], _COLUMNS: []}
        for key in self.store.list_addressable(directory):
            name = key[len(directory) :]
            for pattern, parts in found.items():
                if match := pattern.fullmatch(name):
                    parts.append(_Part(int(match.group(1)), match.group(2) or "", key))
        compacted, deltas, columns = (
            sorted(found[pattern], key=lambda part: part.stamp) for pattern in found
        )
        return compacted, deltas, columns

    def check_room(self, sku_id: str) -> None:
        """``BadInput('key_too_long')`` (``ObjectStore.check_room``) when the store leaves the SKU's
        manifest parts too little room: their longest key, a columnar copy's. Checked before an event's
        objects are written, so that none is written for an event whose rows could not be."""
        part = self.key(f"manifests/{sku_id}/part-c-{0:010d}-{'0' * 32}.jsonl")
        self.store.check_room(self.columns_key(part))

    def check_prefix_room(self) -> None:
        """``ConfigError`` naming SKUFORGE_TRAINSTORE_PREFIX when the store refuses the keys of the
        shortest ids (a manifest part's, an image's and a mask's) under the prefix. Checked at start: a
        running stage refused every event, each a ``key_too_long`` letter, never one line naming the
        setting. The room depends on the store (an S3 store's prefix counts), so the settings cannot."""
        image, mask = content_keys("x", "synthetic", "x", "0" * 64, "0" * 64)
        try:
            self.check_room("x")
            for key in (image, mask):
                self.store.check_room(self.key(key))
        except BadInput as exc:
            raise ConfigError(
                f"SKUFORGE_TRAINSTORE_PREFIX ({len(self.prefix.encode('utf-8'))} bytes) leaves no event's "
                f"keys room, not even those of one-character ids (the default is 'trainstore'): {exc}"
            ) from None

    @staticmethod
    def columns_key(compacted_key: str) -> str:
        """Key of the columnar copy of the compacted part at ``compacted_key``."""
        directory, _, name = compacted_key.rpartition("/")
        columns = "columns-c-" + name.removeprefix("part-c-").removesuffix(".jsonl") + ".json"
        return f"{directory}/{columns}" if directory else columns

    def read_sku(self, sku_id: str) -> dict[str, ManifestRow]:
        """Every item of one SKU, item_id -> its current row.

        A compaction running meanwhile (the stage's own, or ``skuforge dataset compact``) may delete
        a part between the listing and its read; it wrote the merged part first, so a fresh listing
        has every row. A part that keeps vanishing is a ``TransientError`` (retried), never
        ``ObjectMissing``, which the stage would dead-letter as the event's fault.
        """
        return {item_id: row for item_id, (_, row) in self._read(sku_id)[0].items()}

    def _read(
        self, sku_id: str
    ) -> tuple[dict[str, tuple[str, ManifestRow]], list[_Part], list[_Part], list[_Part]]:
        """item_id -> (stamp, current row), with the listing it was read from (``_listing``)."""
        for _attempt in range(READ_ATTEMPTS):
            compacted, deltas, columns = self._listing(sku_id)
            merged: dict[str, tuple[str, ManifestRow]] = {}
            part: _Part | None = None
            try:
                for part in compacted:
                    for stamp, row in _decode_stamped(self.store.get_bytes(part.key), part.stamp):
                        _fold(merged, stamp, row)
                for part in deltas:
                    for row in decode_rows(self.store.get_bytes(part.key)):
                        _fold(merged, part.stamp, row)
            except ObjectMissing:
                continue
            except ValidationError as exc:  # a hand-edited part, or a value a newer version allows
                assert part is not None
                raise ManifestUnreadable(self.store.uri_for(part.key), exc) from exc
            return merged, compacted, deltas, columns
        raise TransientError(f"the manifest parts of {sku_id} kept changing while being read")

    def sku_ids(self) -> list[str]:
        """SKUs that have a manifest part, sorted. Another file under manifests/ (a .DS_Store a file
        browser left, a note) is no SKU: listed as one, ``load_manifest`` refused the whole store."""
        root = self.key("manifests/")
        found = set()
        for key in self.store.list_addressable(root):
            sku_id, _, name = key[len(root) :].partition("/")
            if _COMPACTED.fullmatch(name) or _DELTA.fullmatch(name):
                found.add(sku_id)
        return sorted(found)

    def append(
        self, sku_id: str, rows: list[ManifestRow], *, current: dict[str, ManifestRow] | None = None
    ) -> str | None:
        """Write ``rows`` as the SKU's next delta part, leaving out rows the manifest already has.

        ``current`` is the SKU's manifest if the caller just read it. Returns the key written, or
        None when nothing was new (a redelivered event writes nothing) or every new row is of an
        event older than the item's row (``stands``).
        """
        current = self.read_sku(sku_id) if current is None else current
        fresh = [
            row for row in rows if current.get(row.item_id) != row and stands(row, current.get(row.item_id))
        ]
        if not fresh:
            return None
        compacted, deltas, _ = self._listing(sku_id)
        seq = max([0, *(part.seq for part in (*compacted, *deltas))]) + 1
        body = encode_rows(fresh)
        key = self.key(f"manifests/{sku_id}/part-d-{seq:010d}-{derive_id(body.decode())}.jsonl")
        self.store.put_bytes(key, body, "application/x-ndjson")
        return key

    def compact(self, sku_id: str, *, min_deltas: int = 1) -> bool:
        """Merge the SKU's parts into one compacted part when there are at least ``min_deltas`` deltas
        (or more than one compacted part, left by compactions that overlapped); a SKU with one compacted
        part and no deltas gets its columnar copy written again if it is gone or does not read.

        The new part is named by its content and written before anything is deleted, and only the
        parts read are deleted: a part another writer puts meanwhile, delta or compacted, stays and
        is read. Returns whether it compacted or wrote the copy.
        """
        merged, compacted, deltas, columns = self._read(sku_id)
        if len(compacted) <= 1 and len(deltas) < max(1, min_deltas):
            # Only with no deltas: the stage compacts after each delta it writes, and reading the copy
            # then would cost every event a read. The next compaction writes a new copy anyway.
            if len(compacted) == 1 and not deltas:
                return self._mend_columns(compacted[0], [row for _, row in merged.values()])
            return False
        seq = max(part.seq for part in (*compacted, *deltas))
        body = _encode_stamped(merged.values())
        new_part = self.key(f"manifests/{sku_id}/part-c-{seq:010d}-{derive_id(body.decode())}.jsonl")
        rows = [row for _, row in merged.values()]
        # The columnar copy first: a reader only uses it beside its compacted part.
        self.store.put_bytes(self.columns_key(new_part), encode_columns(rows), "application/json")
        self.store.put_bytes(new_part, body, "application/x-ndjson")
        read = {part.key for part in (*compacted, *deltas)}
        # Columnar copies of the parts read, and older copies whose part is gone (a crash between the
        # two writes); a copy of this number without its part may be an overlapping compaction's.
        superseded = {self.columns_key(part.key) for part in compacted} | {
            part.key for part in columns if part.seq < seq
        }
        for key in sorted((read | superseded) - {new_part, self.columns_key(new_part)}):
            self.store.delete(key)
        return True

    def _mend_columns(self, part: _Part, rows: list[ManifestRow]) -> bool:
        """Write the columnar copy of ``part`` (the SKU's only part, holding ``rows``) again when it is
        gone or does not read (``decode_columns``); the part itself stays as it is. Returns whether it
        wrote the copy.

        Such a copy had every ``load_manifest`` read the part instead (slower, a warning each time), and
        nothing wrote it again: a SKU no event reaches is never compacted. The copy goes beside its part,
        as a compaction's does; should a compaction replace the part meanwhile, the copy is left without
        one, never read, and deleted by a later compaction (``compact``'s older copies).
        """
        key = self.columns_key(part.key)
        try:
            decode_columns(self.store.get_bytes(key))
            return False
        except (ObjectMissing, ValueError):
            pass  # lost, cut short, without a column every copy has, another version's
        self.store.put_bytes(key, encode_columns(rows), "application/json")
        return True

    def iter_rows(self, sku_ids: Iterable[str] | None = None) -> Iterator[ManifestRow]:
        """Every current row of the given SKUs (all by default), SKU by SKU, each SKU once."""
        # A SKU named twice (``--sku A --sku A``) would yield its rows twice: doubled export lines.
        for sku_id in self.sku_ids() if sku_ids is None else dict.fromkeys(sku_ids):
            yield from self.read_sku(sku_id).values()

    def stored_objects(
        self,
        sku_id: str,
        source: str,
        item_id: str,
        *,
        images: bool = True,
        current: Mapping[str, ManifestRow] | None = None,
    ) -> list[str]:
        """The store's keys of every object of one item: each content stored (``content_keys``) and the
        keys rows named before (``object_keys``); its masks only when ``images`` is False. An item whose
        id goes on after this one's (``p1-b`` of ``p1``) is another. So is the SKU's item whose id is
        this one's, ``-`` and 16 hex digits (ids come from events): its key of the layout before
        (``p1-0123456789abcdef.png``) reads as a content key of this one, so the SKU's rows
        (``current``, read here when not given and needed) tell it apart."""
        found = []
        for relative in object_keys(sku_id, source, item_id)[0 if images else 1 :]:
            key = self.key(relative)
            stem = key.removesuffix(".png")
            if self.store.exists(key):
                found.append(key)
            for listed in self.store.list_addressable(stem + "-"):
                suffix = listed.removeprefix(stem)
                if not _DIGEST_SUFFIX.fullmatch(suffix):
                    continue
                current = self.read_sku(sku_id) if current is None else current
                if f"{item_id}{suffix.removesuffix('.png')}" not in current:
                    found.append(listed)
        return found

    def named_keys(self, rows: Mapping[str, ManifestRow]) -> set[str]:
        """The store's keys of every image and mask ``rows`` (a SKU's, ``read_sku``) name."""
        return {self.key(key) for row in rows.values() for key in (row.image, row.mask) if key}

    def delete_objects(self, sku_id: str, items: Iterable[tuple[str, str]]) -> None:
        """Delete every image and mask of each ``(source, item_id)`` of a SKU (rejected or withdrawn;
        ``stored_objects``), unless the item is trainable again by now: another writer may have stored
        an acceptance of it (a newer row) since. The SKU is read once, just before. (This narrows that
        race to the moment between the read and the delete; closing it would need a conditional
        delete, which not every object store offers.)"""
        current = self.read_sku(sku_id)
        for source, item_id in items:
            row = current.get(item_id)
            if row is not None and row.trainable:
                continue
            for key in self.stored_objects(sku_id, source, item_id, current=current):
                self.store.delete(key)


def object_keys(sku_id: str, source: str, item_id: str) -> tuple[str, str]:
    """Where an item's image and mask were stored before keys named their bytes, relative to the
    prefix: rows written then name them (``content_keys``)."""
    return f"images/{sku_id}/{source}/{item_id}.png", f"masks/{sku_id}/{item_id}.png"


def content_keys(
    sku_id: str, source: str, item_id: str, image_sha256: str, mask_sha256: str
) -> tuple[str, str]:
    """Where an item's image and mask with these sha256 go, relative to the prefix: the keys of
    ``object_keys`` with the bytes' sha256 in them (``shared.store.digest_key``, as the generator
    names its images). A redelivery puts the same bytes under the same key; two members writing one
    item at once put theirs under two keys, and whichever row stands names its own bytes."""
    image, mask = object_keys(sku_id, source, item_id)
    return digest_key(image, image_sha256), digest_key(mask, mask_sha256)


@dataclass(frozen=True)
class _Part:
    """One manifest file of a SKU: its sequence number, its id ("" for the older compacted layout)."""

    seq: int
    part_id: str
    key: str

    @property
    def stamp(self) -> str:
        """The stamp of the rows written in this part (they sort in the order they were written)."""
        return f"{self.seq:010d}-{self.part_id}"


def _fold(merged: dict[str, tuple[str, ManifestRow]], stamp: str, row: ManifestRow) -> None:
    """Merge one stamped row: a decision beats a pending row, else the later event, else the later
    stamp wins (ties: the row folded last; they are copies). The result does not depend on the order
    rows are folded in."""
    current = merged.get(row.item_id)
    if current is not None and _precedence(stamp, row) < _precedence(*current):
        return
    merged[row.item_id] = (stamp, row)


def _encode_stamped(rows: Iterable[tuple[str, ManifestRow]]) -> bytes:
    """A compacted part: ``encode_rows``' lines, each with its row's stamp as the first field."""
    lines = []
    for stamp, row in sorted(rows, key=lambda stamped: stamped[1].item_id):
        if not _STAMP.fullmatch(stamp):
            raise ValueError(f"not a manifest stamp: {stamp!r}")
        fields = _row_json(row)
        lines.append(b'{"%s":"%s",' % (_STAMP_FIELD.encode(), stamp.encode()) + fields[1:] + b"\n")
    return b"".join(lines)


def _decode_stamped(data: bytes, part_stamp: str) -> Iterator[tuple[str, ManifestRow]]:
    """The stamped rows of a compacted part; rows of the older layout (no stamp) get ``part_stamp``.

    The stamp is cut off the line's start and the rest parsed as a ManifestRow, by pydantic's JSON
    parser: several times faster than a dict per line, and a compacted part is read on every event.
    """
    for line in data.splitlines():
        if not line.strip():
            continue
        if match := _STAMPED_LINE.match(line):
            yield match.group(1).decode(), _read_row(b"{" + line[match.end() :])
        else:
            yield part_stamp, _read_row(line)
