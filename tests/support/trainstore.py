"""The trainstore's tests' arrangement: a trainstore stage on a fresh file store, with a context to
call its handlers with directly (no broker); ``add_item``, a manifest row with its stored image and
mask, as the dataset export and storage tests arrange a store; ``stored``, the keys an item's images
and masks are stored under; ``manifest_row``, a row as the manifest tests write one;
``as_mount_point``, an export's OUT on a file system of its own; ``WritesMeanwhile``, a store in which
another member's write comes in between this member's steps; ``TimesOutOnce``, one whose manifest
write times out after it landed; and ``dataset_cli_into_closed_pipe``, a ``skuforge dataset`` command
whose reader has gone; ``produced_envelope`` and ``two_renders``, the order tests' events of one
item produced minutes apart and two renders of one item; ``gate_accepted``, the gate's acceptance of a
render produced so; ``accepted_then_rejected``, a stage that stored one render's acceptance and then a
reviewer's rejection of the item's other render."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from schemas.envelope import Envelope
from schemas.events import GateAccepted, ImageMatted
from schemas.topics import CORRECTION_RESOLVED, GATE_ACCEPTED
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.config import Settings
from shared.errors import TransientError
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore, sha256_hex
from shared.trainstore.manifest import ManifestRow, ManifestStore
from tests.support.cli import skuforge_into_closed_pipe
from tests.support.gate import matted_item, resolved

PREFIX = "trainstore"

# The order tests' SKU and clock: events of one item produced minutes apart.
SKU = "SKU-001"
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def produced_envelope(topic: Any, payload: Any, event_id: str, minute: int) -> Envelope[Any]:
    """An event of SKU produced ``minute`` minutes after T0 (the order tests' clock)."""
    envelope = make_envelope(
        topic, payload, event_id=event_id * 32, sku_id=SKU, trace_id="t" * 32, producer="test"
    )
    return envelope.model_copy(update={"produced_at": T0 + timedelta(minutes=minute)})


def two_renders(store: FileStore) -> tuple[ImageMatted, ImageMatted]:
    """Two renders of one item (a variant rendered again from a changed scene library keeps its id)."""
    first = matted_item(store, 1, 0)
    other_look = matted_item(store, 1, 1).generated.image
    second = first.model_copy(update={"generated": first.generated.model_copy(update={"image": other_look})})
    return first, second


def gate_accepted(matted: ImageMatted, event_id: str, minute: int) -> Envelope[Any]:
    """The gate's acceptance of ``matted`` (IoU 0.97, no checks), produced ``minute`` minutes after T0."""
    return produced_envelope(
        GATE_ACCEPTED, GateAccepted(matted=matted, iou=0.97, checks=[]), event_id, minute
    )


class AcceptedThenRejected(NamedTuple):
    """What ``accepted_then_rejected`` made: ``trainstore_stage``'s four, the two renders, the rejection."""

    store: FileStore
    manifests: ManifestStore
    trainstore: Trainstore
    ctx: Context
    first: ImageMatted
    second: ImageMatted
    rejection: Envelope[Any]


def accepted_then_rejected(tmp_path: Path, rejection_id: str) -> AcceptedThenRejected:
    """A trainstore (compacting after 16 parts) that stored the gate's acceptance of an item's first
    render (event "a", at T0) and then a reviewer's rejection of its second (``rejection_id``, an hour
    later): the item's row is the acceptance, remembering the rejected render and when."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = two_renders(store)
    trainstore.accepted(gate_accepted(first, "a", 0), ctx)
    rejection = produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), rejection_id, 60)
    trainstore.resolved(rejection, ctx)
    return AcceptedThenRejected(store, manifests, trainstore, ctx, first, second, rejection)


def dataset_cli_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``skuforge dataset *args`` with its stdout a pipe whose reader has gone."""
    return skuforge_into_closed_pipe("dataset", *args)


class WritesMeanwhile(FileStore):
    """A file store that runs ``meanwhile`` once, just before the first write of a key containing
    ``marker``: another trainstore member (two may hold one partition number during a rebalance) doing
    its work between this member's read of the manifest and its write. ``meanwhile`` is None once run."""

    def __init__(self, root: Path, marker: str) -> None:
        super().__init__(root)
        self.marker = marker
        self.meanwhile: Callable[[], object] | None = None

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if self.meanwhile is not None and self.marker in key:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        super()._write(key, data, content_type)


class TimesOutOnce(FileStore):
    """S3 stores the next manifest part once ``armed``, and its answer times out."""

    armed = False

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        super()._write(key, data, content_type)
        if "/part-d-" in key and self.armed:
            self.armed = False
            raise TransientError("S3 read timed out")


def trainstore_stage(
    tmp_path: Path,
    compact_after_parts: int,
    settings: Settings | None = None,
    store: FileStore | None = None,
    prefix: str = PREFIX,
) -> tuple[FileStore, ManifestStore, Trainstore, Context]:
    """A trainstore on a fresh store under ``tmp_path`` (or on ``store``), under ``prefix``: the store,
    its manifests, the stage, a context (with ``settings``, default ``Settings()``)."""
    store = FileStore(tmp_path / "store") if store is None else store
    manifests = ManifestStore(store, prefix)
    ctx = Context(
        "trainstore", store, settings or Settings(), StageMetrics("trainstore"), logging.getLogger("test")
    )
    return store, manifests, Trainstore(manifests, compact_after_parts=compact_after_parts), ctx


def add_item(
    manifests: ManifestStore, sku_id: str, item_id: str, source: str, status: str, *, size_px: int = 80
) -> ManifestRow:
    """Store an image and mask the way the trainstore does, and append the item's row."""
    rng = np.random.default_rng(int(sha256_hex(f"{sku_id}/{item_id}".encode())[:8], 16))
    stored = status in ("reference", "accepted", "approved")
    objects = {}
    if stored:
        image = rng.integers(0, 256, (size_px, size_px + 20, 3), dtype=np.uint8)
        mask = np.zeros((size_px, size_px + 20), dtype=np.uint8)
        mask[20:60, 20:60] = 255
        image_key, mask_key = f"images/{sku_id}/{source}/{item_id}.png", f"masks/{sku_id}/{item_id}.png"
        image_ref = manifests.store.put_image(manifests.key(image_key), image)
        mask_ref = manifests.store.put_image(manifests.key(mask_key), mask)
        objects = {
            "image": image_key,
            "image_sha256": image_ref.sha256,
            "mask": mask_key,
            "mask_sha256": mask_ref.sha256,
            "width": size_px + 20,
            "height": size_px,
        }
    row = ManifestRow(
        item_id=item_id,
        sku_id=sku_id,
        category="soda can",
        source=source,
        status=status,
        iou=None if source == "real" else 0.95,
        caption=f"{sku_id} {item_id}",
        **objects,
    )
    manifests.append(sku_id, [row])
    return row


def stored(
    manifests: ManifestStore, sku_id: str, item_id: str, source: str = "synthetic"
) -> tuple[list[str], list[str]]:
    """The store keys of the item's images and of its masks, every one there (``stored_objects``:
    each content stored, and the keys of the layout before keys named the bytes)."""
    everything = manifests.stored_objects(sku_id, source, item_id)
    masks = manifests.stored_objects(sku_id, source, item_id, images=False)
    return [key for key in everything if key not in masks], masks


def as_mount_point(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``out`` behave as a mount point (a Docker volume, an NFS disk): a rename between a path
    inside it and one outside fails with EXDEV, as the kernel does across file systems."""

    def inside(path: Any) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(out)

    for name in ("rename", "replace"):
        real = getattr(os, name)

        def crossing(src: Any, dst: Any, *args: Any, _real: Any = real, **kwargs: Any) -> None:
            if inside(src) != inside(dst):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
            _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, crossing)


def manifest_row(
    item_id: str, status: str = "accepted", sku_id: str = "SKU-1", **fields: object
) -> ManifestRow:
    """A manifest row of a synthetic can, ``fields`` set over its defaults."""
    values: dict[str, object] = {
        "item_id": item_id,
        "sku_id": sku_id,
        "category": "can",
        "source": "synthetic",
    }
    values.update(fields)
    return ManifestRow(status=status, **values)
