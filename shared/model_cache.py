"""Model files and folders named by URI, copied once into a local cache.

No model is fetched from a hub: a model is one file (an ONNX matting model, a LoRA's weights) or a
folder in ``save_pretrained`` layout (BLIP, a diffusion pipeline) in an object store (``s3://``,
``file://``). The first use copies it under the cache directory (``<system temp>/skuforge-models``
unless configured); every copy is written under a private temporary name and renamed into place, so
a concurrent reader never loads half a model. A URI inside the caller's own object store is read
through that store (its client and credentials); any other through ``open_store``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from shared.store import ObjectStore, open_store

__all__ = ["COMPLETE_MARKER", "cache_dir", "fetch_directory", "fetch_file", "write_atomically"]

# Written last into a copied folder: the keys it holds. A folder without it is incomplete.
COMPLETE_MARKER = ".skuforge-complete.json"


def cache_dir(configured: Path | str | None = None) -> Path:
    """Where models are copied: ``configured``, else ``<system temp>/skuforge-models``."""
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "skuforge-models"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _source(
    uri: str, store: ObjectStore | None, s3_endpoint_url: str | None, s3_region: str
) -> tuple[ObjectStore, str]:
    """The store that holds ``uri`` (a folder URI) and the key prefix of ``uri`` inside it."""
    if store is not None and uri.startswith(store.base_uri + "/"):
        return store, store.key_for(uri) + "/"
    return open_store(uri, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region), ""


def fetch_file(
    uri: str,
    cache: Path | str | None = None,
    *,
    store: ObjectStore | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
) -> Path:
    """Copy the object ``uri`` into the cache as ``<sha256 of its bytes, 16 hex>-<file name>``.

    The name carries the content's digest, so a model replaced under the same URI is a new file.
    Raises ``ValueError`` for a URI that names no file, ``ObjectMissing`` when nothing is stored there.
    """
    parent, _, file_name = uri.rpartition("/")
    if not file_name or "://" not in parent:
        raise ValueError(f"{uri!r} names no file")
    if store is not None and uri.startswith(store.base_uri + "/"):
        data = store.get_bytes(uri)
    else:
        data = open_store(parent, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region).get_bytes(file_name)
    target = cache_dir(cache) / f"{hashlib.sha256(data).hexdigest()[:16]}-{file_name}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        write_atomically(target, data)
    return target


def fetch_directory(
    uri: str,
    cache: Path | str | None = None,
    *,
    store: ObjectStore | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    required_file: str | None = None,
) -> Path:
    """Copy every object under the folder ``uri`` into the cache; returns the local folder.

    The copy is named by the URI (``<last part>-<sha256 of the URI, 16 hex>``) and reused while it holds
    exactly the keys the store lists: model folders are treated as immutable, so publish a changed
    model under a new URI. Raises ``ValueError`` when nothing is stored under ``uri``, or when
    ``required_file`` (e.g. ``config.json``) is not among what is.
    """
    root = uri.rstrip("/")
    source, prefix = _source(root, store, s3_endpoint_url, s3_region)
    keys = sorted(key[len(prefix) :] for key in source.list_keys(prefix) if not key.endswith(COMPLETE_MARKER))
    if required_file is not None and required_file not in keys:
        raise ValueError(
            f"{root}/ holds no {required_file}: not a save_pretrained folder (keys: {keys[:10]})"
        )
    if not keys:
        raise ValueError(f"nothing is stored under {root}/")
    base = cache_dir(cache)
    target = base / f"{root.rpartition('/')[2] or 'root'}-{hashlib.sha256(root.encode()).hexdigest()[:16]}"
    marker = target / COMPLETE_MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("keys") == keys:
        return target
    base.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=base, prefix=".partial-"))
    try:
        for key in keys:
            path = partial.joinpath(*key.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(source.get_bytes(prefix + key))
        (partial / COMPLETE_MARKER).write_text(json.dumps({"uri": root, "keys": keys}), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
