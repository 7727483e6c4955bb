"""End to end: real product photos in, each generated image decided exactly once, real photos stored too.

The SKUs are the committed sample of real photos (``samples/grocerystore/``: three GroceryStoreDataset
products, three photos each); the real broker, the real Triton server (``skuforge serve generator``,
composite backend, CPU), a moto S3 server as the object store, the default U2-NetP; every stage of
the flow (captioner, generator, matting, gate, trainstore, the console's intake) runs with its
production wiring, each in a thread of this process. One SKU's category is held to an IoU no image
reaches and the others' to nothing at all, so both outcomes (accepted into the retraining store,
queued in the console) are exercised whatever today's model makes of real photos: how good the masks
are is not this test's question (tests/test_real_photos.py and bench/ ask it). A real photo in which
the model finds no product is recorded as unusable, and its SKU goes on with the others.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devstack.demo.demo import SAMPLE_SKUS
from schemas.envelope import Envelope
from schemas.events import ImageGenerated
from schemas.topics import ALL_TOPICS, IMAGE_GENERATED
from services.captioner.stage import build_stage as build_captioner
from services.console.intake import build_intake_stage
from services.console.tasks import TaskFilter, TaskStore
from services.gate.config import GateSettings
from services.gate.stage import build_stage as build_gate
from services.generator.stage import build_stage as build_generator
from services.ingest.ingest import ingest_path
from services.matting.stage import build_stage as build_matting
from services.trainstore.stage import build_stage as build_trainstore
from shared.config import load_settings
from shared.generation.settings import GenerationSettings
from shared.observability import topics_held
from shared.runtime import Stage
from shared.store import ObjectStore
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from tests.support.bus import create_topics, isolated_settings, read_topic, record_count, running
from tests.support.triton import TritonServerProcess

SKUS = 3
PHOTOS_PER_SKU = 3
VARIANTS = 3
REVIEW_CATEGORY = "e2e needs review"
# Every item of these categories passes the gate, however its mask came out.
PASS_ALL = {
    "iou_min": 0.0,
    "min_foreground_fraction": 0.0,
    "max_foreground_fraction": 1.0,
    "drift_tolerance": 1e9,
}
REVIEW_SKU = "GROCERY-OATLY-001"


def holds_partitions(stage: Stage) -> bool:
    """The stage's consumer holds partitions of every topic it consumes (its lag gauge names them)."""
    return set(stage.topics) <= topics_held(stage.metrics.registry.collect())


def sample_catalogue(out: Path) -> dict[str, str]:
    """A copy of the committed sample SKUs, sku_id → category; ``REVIEW_SKU`` gets the review-only one."""
    shutil.copytree(SAMPLE_SKUS, out)
    metadata_path = out / REVIEW_SKU / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["category"] = REVIEW_CATEGORY
    metadata_path.write_text(json.dumps(metadata))
    catalogue = {
        metadata["sku_id"]: metadata["category"]
        for metadata in (json.loads(path.read_text()) for path in sorted(out.glob("*/metadata.json")))
    }
    assert len(catalogue) == SKUS and catalogue[REVIEW_SKU] == REVIEW_CATEGORY
    return catalogue


def rows_of(manifests: ManifestStore, sku_ids: list[str]) -> list[ManifestRow]:
    return list(manifests.iter_rows(sku_ids))


@pytest.mark.kafka
@pytest.mark.slow
def test_every_generated_image_lands_once_in_the_store_or_the_console_queue(
    kafka_bootstrap: str, s3_store: ObjectStore, s3_endpoint: str, tmp_path: Path, triton: TritonServerProcess
) -> None:
    settings = isolated_settings(kafka_bootstrap, s3_store.uri_for("root"), s3_endpoint_url=s3_endpoint)
    create_topics(settings, *ALL_TOPICS)
    generation = load_settings(
        GenerationSettings,
        generation_triton_url=triton.grpc_url,
        generation_variants_per_sku=VARIANTS,
        generation_size_px=256,
        generation_triton_timeout_s=60.0,
    )
    categories = sample_catalogue(tmp_path / "skus")
    sku_ids = sorted(categories)
    gate = load_settings(
        GateSettings,
        gate_category_overrides={
            **{category: PASS_ALL for category in categories.values()},
            REVIEW_CATEGORY: {"iou_min": 0.9999},
        },
    )
    trainstore = load_settings(TrainstoreSettings)
    tasks = TaskStore(tmp_path / "console" / "tasks.sqlite3")
    common: dict[str, Any] = {"settings": settings, "store": s3_store}
    stages = [
        build_captioner(**common),
        build_generator(generation=generation, **common),
        build_matting(**common),
        build_gate(gate=gate, **common),
        build_trainstore(trainstore=trainstore, **common),
        build_intake_stage(tasks, **common),
    ]
    manifests = ManifestStore(s3_store, trainstore.trainstore_prefix)
    expected_images = SKUS * VARIANTS

    with contextlib.ExitStack() as stack:
        for stage in stages:
            stack.enter_context(running(stage))
        deadline = time.monotonic() + 120
        while not all(holds_partitions(stage) for stage in stages):
            assert time.monotonic() < deadline, [s.name for s in stages if not holds_partitions(s)]
            time.sleep(0.5)

        ingest_path(tmp_path / "skus", settings, store=s3_store)

        def decided() -> int:
            synthetic = [r for r in rows_of(manifests, sku_ids) if r.source == "synthetic"]
            queued = tasks.query(TaskFilter(state=None), limit=1000)
            return sum(1 for r in synthetic if r.status == "accepted") + len(queued)

        deadline = time.monotonic() + 420
        while decided() < expected_images:
            assert time.monotonic() < deadline, f"only {decided()} of {expected_images} images decided"
            time.sleep(1)
        generated_records = read_topic(
            kafka_bootstrap, settings.topic_name(IMAGE_GENERATED), expect=expected_images, timeout_s=30
        )
        time.sleep(3)  # a duplicate, if any were coming, would arrive now

    # Delivery is at least once: a rebalance, or a flush that timed out and was retried, on a loaded machine
    # may send an image.generated again. A resend is the same event (its event_id is derived from its
    # input's), so each image is one event id however often it came; what must be exactly once is the
    # decision stored for it, asserted below.
    events = [Envelope[ImageGenerated].model_validate_json(r.value) for r in generated_records]
    generated = list({event.event_id: event.payload for event in events}.values())
    generated_ids = [g.item_id for g in generated]
    assert len(generated_ids) == expected_images == len(set(generated_ids))
    assert Counter(g.sku.sku_id for g in generated) == dict.fromkeys(sku_ids, VARIANTS)

    rows = rows_of(manifests, sku_ids)
    accepted_rows = [r.item_id for r in rows if r.source == "synthetic" and r.status == "accepted"]
    accepted = set(accepted_rows)
    assert len(accepted_rows) == len(accepted)
    queued_tasks = tasks.query(TaskFilter(state=None), limit=1000)
    queued = [task.item_id for task in queued_tasks]
    # Each generated image is decided exactly once: in the store or in the queue, never both, never twice.
    assert len(queued) == len(set(queued))
    assert accepted.isdisjoint(queued)
    assert accepted | set(queued) == set(generated_ids)
    # The review-only SKU went entirely to the console, with its reason; the others into the store.
    review_sku = REVIEW_SKU
    assert accepted == {g.item_id for g in generated if g.sku.sku_id != review_sku}, [
        (t.sku_id, round(t.iou, 3), t.reasons) for t in queued_tasks if t.sku_id != review_sku
    ]
    assert {t.item_id for t in queued_tasks if t.sku_id == review_sku} == {
        g.item_id for g in generated if g.sku.sku_id == review_sku
    }
    assert all("iou_below_threshold" in t.reasons for t in queued_tasks if t.sku_id == review_sku)
    # The trainstore knows what waits for review, but stores no object for it.
    assert {r.item_id for r in rows if r.status == "pending"} == set(queued)

    prefix = trainstore.trainstore_prefix
    for sku_id in sku_ids:
        # Every real photo is recorded; the usable ones (at least one, or nothing was generated) are
        # stored with their masks, any other says why it was not used.
        real = [r for r in rows if r.sku_id == sku_id and r.source == "real"]
        assert len(real) == PHOTOS_PER_SKU
        assert {r.status for r in real} <= {"reference", "unusable"}
        assert any(r.status == "reference" for r in real)
        assert all(r.reasons for r in real if r.status == "unusable")
        real_keys = set(s3_store.list_keys(f"{prefix}/images/{sku_id}/real/"))
        assert real_keys == {manifests.key(r.image) for r in real if r.status == "reference" and r.image}
        synthetic_keys = set(s3_store.list_keys(f"{prefix}/images/{sku_id}/synthetic/"))
        sku_accepted = {r.item_id for r in rows if r.sku_id == sku_id and r.item_id in accepted}
        assert synthetic_keys == {
            manifests.key(str(r.image)) for r in rows if r.sku_id == sku_id and r.item_id in accepted
        }
        # one file per accepted item, named by its id and its bytes' digest
        names = sorted(key.rsplit("/", 1)[-1] for key in synthetic_keys)
        assert [name.rsplit("-", 1)[0] for name in names] == sorted(sku_accepted)
        for row in rows:
            if row.sku_id == sku_id and row.item_id in accepted:
                assert row.mask and s3_store.exists(manifests.key(row.mask))
                assert row.iou is not None

    # Counted to each DLQ's end, every stage stopped: read_topic(expect=0) could end before a letter came.
    for topic in ALL_TOPICS:
        dlq = settings.dlq_name(topic)
        letters = record_count(kafka_bootstrap, dlq)
        assert letters == 0, (
            topic.name,
            [r.value[:300] for r in read_topic(kafka_bootstrap, dlq, expect=letters)],
        )
