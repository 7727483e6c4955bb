"""Sweeping the retraining store: its objects that no manifest row names, once older than a grace period.

Such objects are what a deletion cut short left (an earlier render's image, a corrected mask), or a
writer whose row lost. The trainstore stage sweeps an item's when it replaces the item again
(``services/trainstore/stage.py``, ``_sweep``); ``find_orphans`` finds a whole SKU's, for ``skuforge
dataset sweep``, which so deletes those of items never written again. Both go through ``past_grace``.

Ages are measured on the store's own clock (S3's LastModified, a file's modification time), against a
manifest part's time, never the clock of the process asking. An object younger than the grace period
(``SKUFORGE_TRAINSTORE_SWEEP_GRACE_S``) may be a writer's whose row is still on its way: a writer puts
its objects, then its row. Only ``images/<sku_id>/<real|synthetic>/*.png`` and ``masks/<sku_id>/*.png``
are ever swept: never a manifest part, a withdrawal marker, or anything outside the store's prefix.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shared.errors import ObjectMissing, TransientError
from shared.store import ObjectStore
from shared.trainstore.manifest import ManifestStore

__all__ = ["SkuOrphans", "find_orphans", "past_grace", "skus_without_manifest"]

# The keys the trainstore writes an item's objects under, after images/<sku_id>/ and masks/<sku_id>/
# (``object_keys``, ``content_keys``): another file there (a note, a .DS_Store) is not the store's to delete.
_IMAGE_NAME = re.compile(r"(?:real|synthetic)/[^/]+\.png")
_MASK_NAME = re.compile(r"[^/]+\.png")


def past_grace(store: ObjectStore, keys: Iterable[str], *, now: datetime, grace_s: float) -> list[str]:
    """Those of ``keys`` written ``grace_s`` or more before ``now`` (a time the store gave:
    ``ObjectStore.modified_at`` of a manifest object). A key gone meanwhile (another sweep, a
    deletion) is left out."""
    old = []
    for key in keys:
        try:
            age_s = (now - store.modified_at(key)).total_seconds()
        except ObjectMissing:
            continue
        if age_s >= grace_s:
            old.append(key)
    return old


@dataclass
class SkuOrphans:
    """A SKU's objects that no row of its manifest names: those past the grace period (to delete) and
    those younger (to keep)."""

    sku_id: str
    past_grace: list[str] = field(default_factory=list)
    young: list[str] = field(default_factory=list)


def find_orphans(manifests: ManifestStore, sku_id: str, *, grace_s: float) -> SkuOrphans:
    """The SKU's objects that no row of its manifest names, split by whether they were written
    ``grace_s`` or more before its newest manifest part.

    The objects are listed before the manifest is read, so an object a writer puts meanwhile is not
    looked at, and one whose row lands meanwhile is named. ``BadInput`` (``manifest_unreadable``) or
    ``TransientError`` (parts kept changing) for a SKU whose manifest does not read.
    """
    owned = _owned_objects(manifests, sku_id)
    named = manifests.named_keys(manifests.read_sku(sku_id))
    unnamed = [key for key in owned if key not in named]
    if not unnamed:
        return SkuOrphans(sku_id)
    now = _newest_manifest_time(manifests, sku_id)
    old = past_grace(manifests.store, unnamed, now=now, grace_s=grace_s)
    return SkuOrphans(sku_id, old, [key for key in unnamed if key not in old])


def skus_without_manifest(manifests: ManifestStore, only: Collection[str] | None = None) -> list[str]:
    """SKUs with objects under images/ or masks/ but no manifest part, sorted: a sweep leaves them alone
    (with no row to say which objects are named, every one would look orphaned). With ``only`` (valid
    SKU ids, ``check_safe_id``), those of them, each looked for under its own folders."""
    with_manifest = set(manifests.sku_ids())
    if only is not None:
        return sorted(
            sku_id
            for sku_id in set(only) - with_manifest
            if any(
                next(manifests.store.list_addressable(manifests.key(f"{folder}{sku_id}/")), None)
                for folder in ("images/", "masks/")
            )
        )
    found = set()
    for folder in ("images/", "masks/"):
        root = manifests.key(folder)
        for key in manifests.store.list_addressable(root):
            sku_id, sep, _ = key[len(root) :].partition("/")
            if sep and sku_id not in with_manifest:
                found.add(sku_id)
    return sorted(found)


def _owned_objects(manifests: ManifestStore, sku_id: str) -> list[str]:
    """The store's keys of the SKU's images and masks of the trainstore's layout (``_IMAGE_NAME``)."""
    owned = []
    for folder, name in ((f"images/{sku_id}/", _IMAGE_NAME), (f"masks/{sku_id}/", _MASK_NAME)):
        root = manifests.key(folder)
        owned += [key for key in manifests.store.list_addressable(root) if name.fullmatch(key[len(root) :])]
    return owned


def _newest_manifest_time(manifests: ManifestStore, sku_id: str) -> datetime:
    """The store's time of the SKU's newest manifest part (another file there does not count)."""
    compacted, deltas = manifests.parts(sku_id)
    times = []
    for _, key in (*compacted, *deltas):
        try:
            times.append(manifests.store.modified_at(key))
        except ObjectMissing:
            continue  # compacted meanwhile; the compaction's part, written first, is newer still
    if not times:
        raise TransientError(f"the manifest parts of {sku_id} kept changing while being read")
    return max(times)
