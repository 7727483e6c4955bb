"""The trainstore's tests' arrangement: a trainstore stage on a fresh file store, with a context to
call its handlers with directly (no broker)."""

from __future__ import annotations

import logging
from pathlib import Path

from services.trainstore.stage import Trainstore
from shared.config import Settings
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore

PREFIX = "trainstore"


def trainstore_stage(
    tmp_path: Path, compact_after_parts: int, settings: Settings | None = None
) -> tuple[FileStore, ManifestStore, Trainstore, Context]:
    """A trainstore on a fresh store under ``tmp_path``: the store, its manifests, the stage, a context
    (with ``settings``, default ``Settings()``)."""
    store = FileStore(tmp_path / "store")
    manifests = ManifestStore(store, PREFIX)
    ctx = Context(
        "trainstore", store, settings or Settings(), StageMetrics("trainstore"), logging.getLogger("test")
    )
    return store, manifests, Trainstore(manifests, compact_after_parts=compact_after_parts), ctx
