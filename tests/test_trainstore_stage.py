"""Gate and trainstore on the real broker and a moto S3 server: exactly the expected objects and rows.

Redelivery is tested the way it happens: fresh stage instances in a new consumer group read every
topic again from the start, so neither the runtime's in-process de-duplication nor any state of
the first instances can hide a duplicate.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.envelope import DeadLetter, Envelope
from schemas.events import CorrectionPending, GateAccepted, GateCheck
from schemas.topics import (
    CORRECTION_PENDING,
    CORRECTION_RESOLVED,
    GATE_ACCEPTED,
    IMAGE_MATTED,
    SKU_CAPTIONED,
    Topic,
)
from services.gate.config import GateSettings
from services.gate.stage import build_stage as build_gate
from services.trainstore.stage import build_stage as build_trainstore
from shared.config import Settings, load_settings
from shared.runtime import Stage
from shared.store import ObjectStore, sha256_hex
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from tests.support.bus import create_topics, isolated_settings, read_topic, running, wait_consumed
from tests.support.gate import captioned, matted_item, pending_of, produce_events, resolved
from tests.support.trainstore import stored as stored_keys

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PREFIX = "trainstore"
TOPICS: tuple[Topic[Any], ...] = (
    IMAGE_MATTED,
    GATE_ACCEPTED,
    CORRECTION_PENDING,
    CORRECTION_RESOLVED,
    SKU_CAPTIONED,
)


def snapshot(store: ObjectStore, prefix: str = PREFIX) -> dict[str, str]:
    """Every object under the retraining store: key -> sha256 of its bytes."""
    return {key: sha256_hex(store.get_bytes(key)) for key in store.list_keys(prefix + "/")}


def run_flow(settings: Settings, store: ObjectStore) -> Stage:
    """Gate and trainstore, until every input and every gate output is consumed; returns the gate."""
    gate = build_gate(settings=settings, store=store, gate=load_settings(GateSettings))
    trainstore = build_trainstore(
        settings=settings,
        store=store,
        trainstore=load_settings(
            TrainstoreSettings, trainstore_prefix=PREFIX, trainstore_compact_after_parts=3
        ),
    )
    with running(gate), running(trainstore):
        wait_consumed(settings, "gate", (IMAGE_MATTED,))
        wait_consumed(
            settings, "trainstore", (GATE_ACCEPTED, CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED)
        )
    return gate


def test_gate_and_trainstore_store_exactly_the_expected_items_once(
    kafka_bootstrap: str, s3_endpoint: str, s3_store: ObjectStore
) -> None:
    settings = isolated_settings(kafka_bootstrap, s3_store.base_uri, s3_endpoint_url=s3_endpoint)
    create_topics(settings, *TOPICS)
    good = [matted_item(s3_store, 1, v) for v in range(3)] + [matted_item(s3_store, 2, v) for v in range(2)]
    shifted = matted_item(s3_store, 1, 3, predicted="shifted")
    empty = matted_item(s3_store, 1, 4, predicted="empty")
    produce_events(settings, IMAGE_MATTED, [*good, shifted, empty])
    produce_events(settings, SKU_CAPTIONED, [captioned(s3_store, 1), captioned(s3_store, 2, photos=1)])
    produce_events(
        settings,
        CORRECTION_RESOLVED,
        [resolved(s3_store, shifted, "approve_edited"), resolved(s3_store, empty, "reject")],
    )

    gate = run_flow(settings, s3_store)

    # The gate's decisions, with reasons and figures.
    accepted = [
        Envelope[GateAccepted].model_validate_json(r.value).payload
        for r in read_topic(kafka_bootstrap, settings.topic_name(GATE_ACCEPTED), expect=5)
    ]
    pending = [
        Envelope[CorrectionPending].model_validate_json(r.value).payload
        for r in read_topic(kafka_bootstrap, settings.topic_name(CORRECTION_PENDING), expect=2)
    ]
    assert sorted(a.matted.generated.item_id for a in accepted) == sorted(m.generated.item_id for m in good)
    assert all(a.iou == 1.0 and all(c.passed for c in a.checks) for a in accepted)
    reasons = {p.matted.generated.item_id: p.reasons for p in pending}
    assert reasons == {
        "gen-001-03": ["iou_below_threshold"],
        "gen-001-04": ["iou_below_threshold", "mask_empty"],
    }
    registry = gate.metrics.registry
    assert registry.get_sample_value("skuforge_gate_decisions_total", {"decision": "accepted"}) == 5
    assert registry.get_sample_value("skuforge_gate_decisions_total", {"decision": "pending"}) == 2
    assert registry.get_sample_value("skuforge_gate_flags_total", {"reason": "mask_empty"}) == 1
    assert registry.get_sample_value("skuforge_gate_iou_count") == 7
    assert registry.get_sample_value("skuforge_gate_iou_bucket", {"le": "0.5"}) == 2
    figures = {
        c.code: c for c in next(p for p in pending if p.matted.generated.item_id == "gen-001-04").checks
    }
    assert figures["iou_below_threshold"].value == 0.0 and figures["iou_below_threshold"].threshold == 0.9

    # Exactly the expected objects: real photos, accepted and approved items; nothing for the rejected one.
    # Each is keyed by its item and the first 16 hex digits of its sha256.
    objects = snapshot(s3_store)
    stored = {
        key.removeprefix(f"{PREFIX}/").removesuffix(f"-{sha256[:16]}.png"): sha256
        for key, sha256 in objects.items()
        if key.startswith((f"{PREFIX}/images/", f"{PREFIX}/masks/"))
    }
    images = sorted(key for key in stored if key.startswith("images/"))
    assert images == [
        "images/SKU-001/real/p0",
        "images/SKU-001/real/p1",
        "images/SKU-001/synthetic/gen-001-00",
        "images/SKU-001/synthetic/gen-001-01",
        "images/SKU-001/synthetic/gen-001-02",
        "images/SKU-001/synthetic/gen-001-03",
        "images/SKU-002/real/p0",
        "images/SKU-002/synthetic/gen-002-00",
        "images/SKU-002/synthetic/gen-002-01",
    ]
    masks = sorted(key for key in stored if key.startswith("masks/"))
    assert masks == sorted(f"masks/{k.split('/')[1]}/{k.rsplit('/', 1)[1]}" for k in images)
    # Images are kept byte for byte; the approved item carries the human's mask, accepted ones the model's.
    assert stored["images/SKU-001/synthetic/gen-001-00"] == good[0].generated.image.sha256
    assert stored["masks/SKU-001/gen-001-03"] == shifted.generated.expected_mask.sha256
    assert stored["masks/SKU-001/gen-001-00"] == good[0].predicted_mask.sha256

    # Exactly the expected manifest rows, one per item.
    rows = load_manifest(s3_store, prefix=PREFIX, trainable_only=False)
    assert sorted((r["sku_id"], r["item_id"], r["source"], r["status"]) for r in rows) == [
        ("SKU-001", "gen-001-00", "synthetic", "accepted"),
        ("SKU-001", "gen-001-01", "synthetic", "accepted"),
        ("SKU-001", "gen-001-02", "synthetic", "accepted"),
        ("SKU-001", "gen-001-03", "synthetic", "approved"),
        ("SKU-001", "gen-001-04", "synthetic", "rejected"),
        ("SKU-001", "p-blurry", "real", "unusable"),
        ("SKU-001", "p0", "real", "reference"),
        ("SKU-001", "p1", "real", "reference"),
        ("SKU-002", "gen-002-00", "synthetic", "accepted"),
        ("SKU-002", "gen-002-01", "synthetic", "accepted"),
        ("SKU-002", "p-blurry", "real", "unusable"),
        ("SKU-002", "p0", "real", "reference"),
    ]
    by_item = {(r["sku_id"], r["item_id"]): r for r in rows}
    assert by_item[("SKU-001", "gen-001-03")]["reviewed_by"] == "alice"
    assert by_item[("SKU-001", "gen-001-00")]["iou"] == 1.0
    p0_image = next(key for key in objects if key.startswith(f"{PREFIX}/images/SKU-001/real/p0-"))
    assert by_item[("SKU-001", "p0")]["image_uri"] == s3_store.uri_for(p0_image)
    trainable = load_manifest(s3_store, prefix=PREFIX)
    assert len(trainable) == 9  # the objects above, and nothing else

    # Compacted: one manifest part per class, and its columnar copy (the one file load_manifest reads).
    manifests = ManifestStore(s3_store, PREFIX)
    for sku_id in ("SKU-001", "SKU-002"):
        manifests.compact(sku_id)
        names = [key.rsplit("/", 1)[1] for key in s3_store.list_keys(f"{PREFIX}/manifests/{sku_id}/")]
        assert [name.split("-")[0] for name in names] == ["columns", "part"]  # the rows, and their columns
    before = snapshot(s3_store)

    # Redelivery of every event to fresh instances changes nothing, not even a manifest part.
    again = settings.model_copy(update={"consumer_group_prefix": f"g{uuid.uuid4().hex[:8]}"})
    run_flow(again, s3_store)
    assert snapshot(s3_store) == before
    assert load_manifest(s3_store, prefix=PREFIX, trainable_only=False) == rows


def accepted_event(store: ObjectStore, sku_index: int, variant: int) -> GateAccepted:
    matted = matted_item(store, sku_index, variant)
    check = GateCheck(code="iou_below_threshold", passed=True, value=1.0, threshold=0.9)
    return GateAccepted(matted=matted, iou=1.0, checks=[check])


def test_missing_or_corrupt_objects_go_to_the_dlq_and_nothing_partial_is_written(
    kafka_bootstrap: str, s3_endpoint: str, s3_store: ObjectStore
) -> None:
    settings = isolated_settings(kafka_bootstrap, s3_store.base_uri, s3_endpoint_url=s3_endpoint)
    create_topics(settings, GATE_ACCEPTED, CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED)
    missing_image = accepted_event(s3_store, 3, 0)
    s3_store.delete(s3_store.key_for(missing_image.matted.generated.image.uri))
    # The image is fine but its mask's bytes changed after the event was written.
    bad_mask = accepted_event(s3_store, 4, 0)
    mask_key = s3_store.key_for(bad_mask.matted.predicted_mask.uri)
    s3_store.put_bytes(mask_key, s3_store.get_bytes(mask_key) + b"tampered")
    # A SKU whose second real photo is missing: neither photo may be stored.
    real = captioned(s3_store, 5)
    s3_store.delete(s3_store.key_for(real.photos[1].image.uri))
    fine = accepted_event(s3_store, 6, 0)
    produce_events(settings, GATE_ACCEPTED, [missing_image, bad_mask, fine])
    produce_events(settings, SKU_CAPTIONED, [real])

    stage = build_trainstore(
        settings=settings,
        store=s3_store,
        trainstore=load_settings(TrainstoreSettings, trainstore_prefix=PREFIX),
    )
    with running(stage):
        letters = read_topic(kafka_bootstrap, settings.dlq_name(GATE_ACCEPTED), expect=2)
        real_letters = read_topic(kafka_bootstrap, settings.dlq_name(SKU_CAPTIONED), expect=1)
        wait_consumed(settings, "trainstore", (GATE_ACCEPTED, SKU_CAPTIONED))

    dead = {letter.sku_id: letter for letter in (DeadLetter.model_validate_json(r.value) for r in letters)}
    assert {sku_id: letter.reason for sku_id, letter in dead.items()} == {
        "SKU-003": "object_missing",
        "SKU-004": "checksum_mismatch",
    }
    assert mask_key in dead["SKU-004"].detail
    assert [DeadLetter.model_validate_json(r.value).reason for r in real_letters] == ["object_missing"]
    # Only the good event reached the store: its two objects and one manifest part.
    stored = sorted(key.removeprefix(f"{PREFIX}/") for key in s3_store.list_keys(f"{PREFIX}/"))
    [good_image, good_mask] = [key for key in stored if not key.startswith("manifests/")]
    assert good_image.startswith("images/SKU-006/synthetic/gen-006-00-")
    assert good_mask.startswith("masks/SKU-006/gen-006-00-")
    assert [key.split("/")[1] for key in stored if key.startswith("manifests/")] == ["SKU-006"]


def test_a_pending_row_never_replaces_a_decision(kafka_bootstrap: str, tmp_path: Path) -> None:
    """correction.resolved may be consumed before correction.pending: the decision stays."""
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path}")
    create_topics(settings, GATE_ACCEPTED, CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED)
    stage = build_trainstore(
        settings=settings, trainstore=load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    )
    matted = matted_item(stage.store, 7, 0, predicted="shifted")
    produce_events(settings, CORRECTION_RESOLVED, [resolved(stage.store, matted, "approve_expected")])
    with running(stage):
        wait_consumed(settings, "trainstore", (CORRECTION_RESOLVED,))
        produce_events(settings, CORRECTION_PENDING, [pending_of(matted)])
        wait_consumed(settings, "trainstore", (CORRECTION_PENDING,))
    rows = load_manifest(stage.store, prefix=PREFIX, trainable_only=False)
    assert [(r["item_id"], r["status"]) for r in rows] == [("gen-007-00", "approved")]
    assert stored_keys(ManifestStore(stage.store, PREFIX), "SKU-007", "gen-007-00")[1] != []


def test_rejecting_a_re_render_keeps_the_accepted_render_of_the_same_item(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A variant rendered again from a changed scene library keeps its item id. Before, a reviewer's
    rejection of the second render removed the first, which the gate had accepted."""
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path}")
    create_topics(settings, GATE_ACCEPTED, CORRECTION_PENDING, CORRECTION_RESOLVED, SKU_CAPTIONED)
    stage = build_trainstore(
        settings=settings, trainstore=load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    )
    first = accepted_event(stage.store, 9, 0)
    other_look = matted_item(stage.store, 9, 1).generated.image
    second = first.matted.model_copy(
        update={"generated": first.matted.generated.model_copy(update={"image": other_look})}
    )
    manifests = ManifestStore(stage.store, PREFIX)
    produce_events(settings, GATE_ACCEPTED, [first])
    with running(stage):
        wait_consumed(settings, "trainstore", (GATE_ACCEPTED,))
        produce_events(settings, CORRECTION_RESOLVED, [resolved(stage.store, second, "reject")])
        wait_consumed(settings, "trainstore", (CORRECTION_RESOLVED,))
        rows = load_manifest(stage.store, prefix=PREFIX, trainable_only=False)
        assert [(r["item_id"], r["status"]) for r in rows] == [("gen-009-00", "accepted")]
        [image_key] = stored_keys(manifests, "SKU-009", "gen-009-00")[0]
        assert sha256_hex(stage.store.get_bytes(image_key)) == first.matted.generated.image.sha256
        # A rejection of the render that is stored still removes it.
        produce_events(settings, CORRECTION_RESOLVED, [resolved(stage.store, first.matted, "reject")])
        wait_consumed(settings, "trainstore", (CORRECTION_RESOLVED,))
    rows = load_manifest(stage.store, prefix=PREFIX, trainable_only=False)
    assert stored_keys(manifests, "SKU-009", "gen-009-00") == ([], [])
    assert not stage.store.exists(image_key)


def test_gate_dead_letters_items_it_cannot_read_or_compare(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path}")
    create_topics(settings, IMAGE_MATTED, GATE_ACCEPTED, CORRECTION_PENDING)
    gate = build_gate(settings=settings, gate=load_settings(GateSettings))
    store = gate.store
    missing = matted_item(store, 8, 0)
    store.delete(store.key_for(missing.predicted_mask.uri))
    tampered = matted_item(store, 9, 0)
    key = store.key_for(tampered.generated.expected_mask.uri)
    store.put_bytes(key, store.get_bytes(key)[:-1])
    # A predicted mask of another size than the image: stored honestly, so only the sizes disagree.
    resized = matted_item(store, 10, 0)
    small = store.put_image("fixtures/small-mask.png", np.zeros((32, 32), dtype=np.uint8))
    resized = resized.model_copy(update={"predicted_mask": small})
    fine = matted_item(store, 11, 0)
    produce_events(settings, IMAGE_MATTED, [missing, tampered, resized, fine])
    with running(gate):
        letters = read_topic(kafka_bootstrap, settings.dlq_name(IMAGE_MATTED), expect=3)
        accepted = read_topic(kafka_bootstrap, settings.topic_name(GATE_ACCEPTED), expect=1)
    reasons = {
        letter.sku_id: letter.reason for letter in (DeadLetter.model_validate_json(r.value) for r in letters)
    }
    assert reasons == {
        "SKU-008": "object_missing",
        "SKU-009": "checksum_mismatch",
        "SKU-010": "dimension_mismatch",
    }
    assert [Envelope[GateAccepted].model_validate_json(r.value).sku_id for r in accepted] == ["SKU-011"]
