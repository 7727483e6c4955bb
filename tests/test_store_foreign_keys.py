"""Keys a shared bucket may hold that the store cannot address (``a//b``, ``./x``, a backslash).

Listed, reading one raised a ValueError: one foreign object in the adapter bucket stopped every
adapter listing (so every diffusion row and ``skuforge adapters list``), and one under the retraining
store's ``manifests/`` every manifest read. ``list_addressable`` leaves such keys out, each logged.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared.generation.adapters import AdapterRegistry
from shared.store import ObjectStore
from shared.trainstore.manifest import ManifestStore
from tests.support.lora import lora_weights
from tests.support.trainstore import manifest_row


def put_foreign(store: Any, key: str, data: bytes = b"{}") -> None:
    """An object written by another tool straight into the bucket, past the store's key check."""
    store.client.put_object(Bucket=store.bucket, Key=store._key_prefix + key, Body=data)


def test_a_foreign_object_in_the_adapter_bucket_leaves_the_adapters_listed(
    s3_store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    registry = AdapterRegistry(s3_store)
    registry.register("cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15")
    for foreign in ("./metadata.json", "lora\\v1/metadata.json", "tab\t/metadata.json"):
        put_foreign(s3_store, foreign)
    with caplog.at_level(logging.WARNING, logger="skuforge.store"):
        assert [adapter.adapter_id for adapter in registry.list()] == ["cola-v"]
    assert "'./metadata.json' left out: the store cannot address it (key './metadata.json' has a '.'" in (
        caplog.text
    )
    assert (
        "contains a backslash" in caplog.text
        and "contains a control character (U+0009 at character 4)" in caplog.text
    )


def test_a_foreign_object_under_manifests_leaves_the_manifests_readable(s3_store: ObjectStore) -> None:
    manifests = ManifestStore(s3_store, "trainstore")
    manifests.append("SKU-1", [manifest_row("a")])
    put_foreign(s3_store, "trainstore/manifests/./part-c-0000000001.jsonl")
    assert manifests.sku_ids() == ["SKU-1"]
    assert list(manifests.read_sku("SKU-1")) == ["a"]
