"""Review 47 of ingest, third pass: a folder ingest that meets a manifest part that does not read."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.topics import SKU_INGESTED
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, record_count
from tests.support.ingest import sku_folder, spoil_manifest_part, stored_reference

PREFIX = "trainstore"


def test_an_ingest_meeting_an_unreadable_manifest_part_names_it_and_says_to_run_the_ingest_again(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge ingest batch/` where one SKU's manifest part holds a row that does not read stopped with
    the part's uri cut at 300 characters, right where the advice sat, "The store refused it" (the store
    refused nothing), and the trainstore stage's advice to replay the dead letters (ingest has none).
    Its user now reads the part, what is wrong with it, to restore it or remove the row and run the same
    ingest again, and which SKUs were published and which were not uploaded."""
    store = FileStore(tmp_path / "store")
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, partitions=1)
    manifests = stored_reference(store, PREFIX, "B-1")
    part = spoil_manifest_part(store, manifests, "B-1")
    sku_folder(tmp_path / "batch", "a", "A-1")
    sku_folder(tmp_path / "batch", "b", "B-1")
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SKUFORGE_TOPIC_NAMESPACE", settings.topic_namespace)
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", PREFIX)

    assert cli_main(["ingest", str(tmp_path / "batch")]) == 1

    err = capsys.readouterr().err
    unreadable = f"manifest_unreadable: {store.uri_for(part)} holds a row that is not a manifest row"
    assert unreadable in err, err
    assert "restore that part from a backup or remove the row, then run the same ingest again" in err, err
    assert "Published: A-1" in err and "not published, their photos not uploaded either: B-1" in err, err
    assert "refused it" not in err and "dead letter" not in err and "dlq replay" not in err, err
    assert record_count(kafka_bootstrap, settings.topic_name(SKU_INGESTED)) == 1
    assert not list(store.list_keys("incoming/B-1/"))
