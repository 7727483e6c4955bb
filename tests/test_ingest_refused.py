"""Ingest, a SKU whose sku.ingested the broker refuses for good (a record over the topic's
max.message.bytes): the error names the SKU and its folder, says a rerun alone will not publish it, and
the other SKUs of the batch are published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from kafka.admin import NewTopic

from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import SKU_INGESTED
from services.ingest.ingest import IngestIncomplete, ingest_path
from shared.synth import write_sku_folders
from tests.support.bus import file_store_uri, isolated_settings, read_topic
from tests.support.kafka import session_admin

pytestmark = pytest.mark.kafka

# Between the record of a SKU of 2 photos (about 1.1 kB) and that of one of 8 (about 3 kB).
TOPIC_LIMIT = "2000"


def test_a_sku_the_broker_refuses_is_named_and_the_others_are_published(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the refusal (a TransientError) ended the batch at that SKU: first in the batch, it read
    "is Kafka at SKUFORGE_KAFKA_BOOTSTRAP running?" naming neither SKU nor folder; later, "run the same
    command again to finish", which met the same refusal at every run, and the SKUs after it never went
    out."""
    write_sku_folders(tmp_path / "many", skus=1, photos_per_sku=8, seed=7, size_px=128)
    write_sku_folders(tmp_path / "few", skus=3, photos_per_sku=2, seed=7, size_px=128)
    batch = tmp_path / "batch"
    shutil.copytree(tmp_path / "many" / "skus", batch)  # SYN-7-0001, first in the batch, 8 photos
    for folder in sorted((tmp_path / "few" / "skus").iterdir())[1:]:
        shutil.copytree(folder, batch / folder.name)
    ids = sorted(json.loads((folder / "metadata.json").read_text())["sku_id"] for folder in batch.iterdir())
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"), flush_timeout_s=10.0)
    topic = settings.topic_name(SKU_INGESTED)
    admin = session_admin(kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": TOPIC_LIMIT})])
    admin.wait_for_topics([topic], timeout_ms=30_000)

    with pytest.raises(IngestIncomplete) as refused:
        ingest_path(batch, settings)
    message = str(refused.value)
    assert f"{ids[0]} ({batch / ids[0]})" in message and "MessageSizeTooLarge" in message
    assert "max.message.bytes" in message and "a rerun alone will not publish" in message
    assert f"published 2 of 3 SKUs: {ids[1]}, {ids[2]}" in message
    records = read_topic(kafka_bootstrap, topic, expect=2, timeout_s=30)
    published = sorted(Envelope[SkuIngested].model_validate_json(record.value).sku_id for record in records)
    assert published == ids[1:]
