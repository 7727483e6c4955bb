"""Loading the retraining store for training code: manifests only, never a listing of images.

    from shared.trainstore.loader import load_manifest

    manifest = load_manifest("s3://bucket/prefix", uri_from="--store")   # or an ObjectStore
    labels = manifest.column("sku_id")            # a new list of one ManifestRow field
    images = manifest.uris("image")               # full URIs of the images
    for row in manifest:                          # or row by row, as dicts (with image_uri, mask_uri)
        row["sku_id"], row["source"], row["image_uri"], row["caption"]

Columns, not a dict per row: two million items load in seconds and hold far less memory. Each
SKU costs one read, its compacted manifest's columnar copy; a SKU with deltas not compacted yet, or
whose copy is missing or does not read (cut short, another version's), is merged row by row through
``ManifestStore`` from its JSONL parts (slower, same values) until ``skuforge dataset compact`` writes
the copy again (``ManifestStore.compact``). A list field (``reasons``) loads as a
tuple: rows share no value a change to one of them could reach.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, get_origin, overload

from schemas.common import check_safe_id
from shared.config import load_settings
from shared.errors import ObjectMissing
from shared.store import ObjectStore, check_store_uri, open_store
from shared.trainstore.manifest import TRAINABLE, ManifestRow, ManifestStore, decode_columns, rows_to_columns
from shared.trainstore.withdrawals import Withdrawals, photo_of_item

__all__ = ["FIELDS", "Manifest", "load_manifest"]

log = logging.getLogger(__name__)

FIELDS: tuple[str, ...] = tuple(ManifestRow.model_fields)
# Fields whose values are lists (``reasons``): loaded as tuples. The columnar copy's common value is one
# list repeated down its column, so a change to one row's list was a change to every row's.
_LIST_FIELDS = frozenset(
    name for name, info in ManifestRow.model_fields.items() if get_origin(info.annotation) is list
)
# Fields whose values are dicts (``rejected_at``): loaded read-only, for the same reason.
_DICT_FIELDS = frozenset(
    name for name, info in ManifestRow.model_fields.items() if get_origin(info.annotation) is dict
)


@dataclass
class Manifest:
    """Rows of the retraining store, column by column; ``image``/``mask`` are keys under ``root_uri``.
    A list field of ``ManifestRow`` (``reasons``) holds tuples, a dict field (``rejected_at``, its times
    as ISO strings) read-only dicts in ``column`` (``dict(value)`` for a copy to change), dicts of its
    own in each ``row``: no row shares a value one could change."""

    root_uri: str
    columns: dict[str, list[Any]] = field(default_factory=lambda: {name: [] for name in FIELDS})

    def __len__(self) -> int:
        return len(self.columns["item_id"])

    def column(self, name: str) -> list[Any]:
        """The values of one ManifestRow field, in row order: a new list, the caller's to change.

        It was the manifest's own: training code that relabelled or sorted its labels in place changed
        the loaded manifest (its rows, ``uris``, a later ``column``) under every other reader of it."""
        return list(self.columns[name])

    def uris(self, name: str = "image") -> list[str | None]:
        """Full URIs of the ``image`` or ``mask`` column (None where nothing is stored)."""
        return [self.root_uri + key if key else None for key in self.columns[name]]

    def row(self, index: int) -> dict[str, Any]:
        """One row as a dict: every field, plus ``image_uri`` and ``mask_uri``. It is the caller's: a
        dict field (``rejected_at``) is a dict of its own, so the row dumps as JSON and changing it
        changes no other row."""
        row = {name: values[index] for name, values in self.columns.items()}
        for name in _DICT_FIELDS:
            row[name] = dict(row[name])
        row["image_uri"] = self.root_uri + row["image"] if row["image"] else None
        row["mask_uri"] = self.root_uri + row["mask"] if row["mask"] else None
        return row

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.row(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.row(index) for index in range(len(self)))


@overload
def load_manifest(
    store: ObjectStore,
    *,
    prefix: str = "trainstore",
    sku_ids: Iterable[str] | None = None,
    trainable_only: bool = True,
) -> Manifest: ...


@overload
def load_manifest(
    store: str,
    *,
    prefix: str = "trainstore",
    sku_ids: Iterable[str] | None = None,
    trainable_only: bool = True,
    s3_endpoint_url: str | None = None,
    uri_from: str,
) -> Manifest: ...


def load_manifest(
    store: ObjectStore | str,
    *,
    prefix: str = "trainstore",
    sku_ids: Iterable[str] | None = None,
    trainable_only: bool = True,
    s3_endpoint_url: str | None = None,
    uri_from: str | None = None,
) -> Manifest:
    """Every current row of the given SKUs (all by default), sorted by SKU then item id.

    Only trainable rows (real reference photos, gate-accepted and human-approved items) unless
    ``trainable_only`` is False. ``store`` is an ``ObjectStore`` or its URI (``file://``, ``s3://``).
    An s3:// URI is read as the services read theirs: at ``s3_endpoint_url`` (default
    SKUFORGE_S3_ENDPOINT_URL's; neither: AWS) in SKUFORGE_S3_REGION, and an S3 refusal names ``uri_from``,
    where the caller's URI came from (its option or setting); a URI without it is refused (TypeError).
    It was read from AWS in us-east-1 whatever those said, and a refusal blamed SKUFORGE_STORE_URI; then,
    with uri_from left out, "load_manifest's store", which names no option or setting to check.

    ``ValueError`` for a store with no SKU at all (most often a mistyped URI or prefix) and for a
    requested SKU id the store does not have (``../x`` too: no SKU can have it): either read as an
    empty or smaller training set.
    """
    if isinstance(store, ObjectStore):
        objects = store
    elif uri_from is None:
        raise TypeError(
            "load_manifest: a store URI needs uri_from, where the URI came from (your option or setting, "
            "such as '--store'): an S3 refusal names it"
        )
    else:
        objects = _open(store, s3_endpoint_url, uri_from)
    manifests = ManifestStore(objects, prefix)
    manifest = Manifest(root_uri=objects.uri_for(manifests.key("x"))[: -len("x")])
    if sku_ids is None:
        wanted = manifests.sku_ids()
        if not wanted:
            raise ValueError(
                f"the retraining store {manifest.root_uri} has no SKUs: is it the store (and prefix) the "
                "trainstore service writes?"
            )
    else:
        wanted = sorted(set(sku_ids))
    marked = Withdrawals(manifests).by_sku() if trainable_only else {}
    unknown = []
    for sku_id in wanted:
        # A requested id no SKU can have ("../x") is one the store does not have; read as a key prefix,
        # it was the object store's error ("prefix has a '..' segment").
        sku_columns = _sku_columns(manifests, sku_id) if sku_ids is None or _is_safe_id(sku_id) else None
        if sku_columns is None:
            unknown.append(sku_id)
            continue
        status = sku_columns["status"]
        # An image of a withdrawn photo that a second writer stored in the same moment as the
        # withdrawal stays trainable until the SKU's next write mends it: never loaded meanwhile;
        # nor the photo, where a replayed sku.captioned stored it as a reference then (its marker says).
        withdrawn = {
            item_id
            for item_id, source, value in zip(
                sku_columns["item_id"], sku_columns["source"], status, strict=True
            )
            if source == "real" and value == "withdrawn"
        } | marked.get(sku_id, set())
        if trainable_only and (not set(status) <= TRAINABLE or withdrawn):
            references = sku_columns["reference_photo_id"]
            sources, item_ids = sku_columns["source"], sku_columns["item_id"]
            keep = [
                index
                for index, value in enumerate(status)
                if value in TRAINABLE
                and photo_of_item(sources[index], item_ids[index], references[index]) not in withdrawn
            ]
            sku_columns = {name: [values[index] for index in keep] for name, values in sku_columns.items()}
        for name in FIELDS:
            values = sku_columns[name]
            if name in _LIST_FIELDS:
                values = _frozen(values, tuple)
            elif name in _DICT_FIELDS:
                values = _frozen(values, ReadOnlyDict)
            manifest.columns[name].extend(values)
    if unknown:
        # Quoted: an empty id or one with a trailing space read as "no SKU  in" (nothing named).
        named = ", ".join(repr(sku_id) for sku_id in unknown)
        raise ValueError(f"no SKU {named} in the retraining store {manifest.root_uri}")
    return manifest


def _open(uri: str, s3_endpoint_url: str | None, uri_from: str) -> ObjectStore:
    """The store ``uri`` names; the settings are read for an s3:// one only, so that a local store opens
    whatever else SKUFORGE_* holds. Only read: its prefix need not leave the flow's keys room (a copy of
    the retraining store in a folder of over 511 bytes was refused). A malformed ``uri`` is refused as
    ``open_store`` refuses it, naming ``uri_from``: checked here first, it named no option."""
    try:
        scheme, _ = check_store_uri(uri, writes=False)
    except ValueError as exc:
        raise ValueError(f"{exc} (from {uri_from})") from None
    if scheme != "s3":
        return open_store(uri, uri_from=uri_from, writes=False)
    settings = load_settings()
    return open_store(
        uri,
        s3_endpoint_url=s3_endpoint_url or settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        uri_from=uri_from,
        writes=False,
    )


def _is_safe_id(sku_id: str) -> bool:
    """Whether ``sku_id`` is an id a SKU can have (``check_safe_id``)."""
    try:
        check_safe_id(sku_id)
    except ValueError:
        return False
    return True


class ReadOnlyDict(dict[str, Any]):
    """A dict no one can change (a ``TypeError``), as a tuple is a list no one can change. A dict all
    the same, so it dumps as JSON, pickles (a Dataset holding the manifest, sent to DataLoader workers)
    and deep-copies, which a ``MappingProxyType`` did not."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a loaded manifest's value is read-only: dict(value) is a copy to change")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[ReadOnlyDict], tuple[dict[str, Any]]]:
        # dict's own pickling fills the new dict with __setitem__, which refuses.
        return (ReadOnlyDict, (dict(self),))


def _frozen(values: list[Any], freeze: Callable[[Any], Any]) -> list[Any]:
    """A column of lists (``freeze`` tuple) or dicts (``ReadOnlyDict``) as values no one can change;
    one value repeated down it (a common value) becomes one frozen value repeated, so the column takes
    no more memory than before."""
    made: dict[int, Any] = {}  # id of a value (all alive while this runs) -> its frozen copy
    for value in values:
        if id(value) not in made:
            made[id(value)] = freeze(value)
    return [made[id(value)] for value in values]


def _sku_columns(manifests: ManifestStore, sku_id: str) -> dict[str, list[Any]] | None:
    """The SKU's rows column by column; None if the store has no manifest of that SKU."""
    compacted, deltas = manifests.parts(sku_id)
    if not compacted and not deltas:
        return None
    if len(compacted) == 1 and not deltas:
        columns_key = manifests.columns_key(compacted[0][1])
        try:
            return decode_columns(manifests.store.get_bytes(columns_key))
        except ObjectMissing:
            pass  # lost, or a compaction replaced the part meanwhile: the JSONL part is the truth
        except ValueError as exc:  # cut short, or another version's: the JSONL part still reads
            log.warning(
                "%s does not read (%s): reading its JSONL part; `skuforge dataset compact` writes it again",
                manifests.store.uri_for(columns_key),
                exc,
            )
    return rows_to_columns(manifests.read_sku(sku_id).values())
