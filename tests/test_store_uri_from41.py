"""``load_manifest`` (review 41): a store URI comes with where it came from (``uri_from``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.store import FileStore
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import ManifestStore
from tests.support.bus import file_store_uri
from tests.support.trainstore import add_item


def test_a_manifest_uri_without_where_it_came_from_is_refused(tmp_path: Path) -> None:
    # uri_from defaulted to "load_manifest's store": an S3 refusal told the training code to check
    # load_manifest's store, whatever option or setting its URI came from.
    add_item(ManifestStore(FileStore(tmp_path / "store"), "ts"), "SKU-1", "i0", "real", "reference")
    untyped: Any = load_manifest  # as training code without mypy calls it
    with pytest.raises(TypeError, match="uri_from"):
        untyped(file_store_uri(tmp_path / "store"), prefix="ts")
    loaded = load_manifest(file_store_uri(tmp_path / "store"), prefix="ts", uri_from="--store")
    assert loaded.column("item_id") == ["i0"]


@pytest.mark.parametrize("uri", ["s3:/bucket/skus", "s3://x/skus", "gs://bucket/skus"])
def test_a_malformed_manifest_uri_is_refused_naming_where_it_came_from(uri: str) -> None:
    """The URI was checked before it was opened, and the refusal, unlike every other of a store's URI,
    did not say where it came from: training code's ``--store`` went unnamed."""
    with pytest.raises(ValueError) as refused:
        load_manifest(uri, uri_from="--store")
    said = str(refused.value)
    assert said.endswith(" (from --store)") and said.count("--store") == 1, said
