"""Helpers for ingest's tests: a SKU folder as its owner hands it over, a SKU the retraining store
already holds rows for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from shared.store import FileStore
from shared.trainstore.manifest import ManifestRow, ManifestStore


def sku_folder(root: Path, folder: str, sku_id: str) -> Path:
    """A SKU folder of one photo (``IMG_1.jpg``, 320x240) and its metadata.json under ``root``."""
    path = root / folder
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(
        json.dumps({"sku_id": sku_id, "name": "Oat drink", "category": "carton"})
    )
    y, x = np.mgrid[0:240, 0:320].astype(float)
    picture = np.stack([x / 2, y, (x + y) / 3], axis=-1).astype(np.uint8)
    Image.fromarray(picture).save(path / "IMG_1.jpg")
    return path


def stored_reference(store: FileStore, prefix: str, sku_id: str) -> ManifestStore:
    """The retraining store under ``prefix`` holding one real reference photo of ``sku_id``: its image
    and its manifest row. Returns the store's manifests."""
    manifests = ManifestStore(store, prefix)
    image = f"images/{sku_id}/real/0123456789abcdef.png"
    store.put_bytes(manifests.key(image), b"png", "image/png")
    row = ManifestRow(
        item_id="0123456789abcdef",
        sku_id=sku_id,
        category="carton",
        source="real",
        image=image,
        status="reference",
    )
    manifests.append(sku_id, [row])
    return manifests


def spoil_manifest_part(store: FileStore, manifests: ManifestStore, sku_id: str) -> str:
    """Make ``sku_id``'s one manifest part hold a row that is not a manifest row (a source no version
    knows); returns the part's key."""
    [part] = list(store.list_keys(manifests.key(f"manifests/{sku_id}/")))
    store.put_bytes(part, store.get_bytes(part).replace(b'"real"', b'"imaginary"'))
    return part
