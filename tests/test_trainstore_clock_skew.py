"""An event dated ahead of the trainstore's clock is dead-lettered as ``clock_skew``, not stored.

The event's ``produced_at`` orders an item's rows. Before, an acceptance from a producer whose clock
ran a day ahead was stored, and every later event of the item (a reviewer's rejection an hour later)
was left out as "older" for as long as the skew lasted.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

from kafka.structs import TopicPartition
from pydantic import BaseModel

from schemas.envelope import DeadLetter, utc_now
from schemas.events import GateAccepted, ImageMatted
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, SKU_CAPTIONED, Topic
from services.trainstore.stage import build_stage
from shared.bus import make_envelope
from shared.config import load_settings
from shared.runtime import Stage
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from tests.support.gate import captioned, matted_item, pending_of, resolved
from tests.support.runtime import _Producer, _record, _wired
from tests.support.trainstore import stored


def _trainstore(tmp_path: Path, **trainstore: Any) -> tuple[FileStore, Stage, _Producer]:
    """A trainstore stage on a file store under ``tmp_path``, wired to a recording producer;
    ``trainstore`` overrides its TrainstoreSettings."""
    store = FileStore(tmp_path / "store")
    stage = build_stage(
        trainstore=load_settings(TrainstoreSettings, **trainstore),
        settings=load_settings(store_uri=f"file://{tmp_path / 'store'}"),
    )
    _, producer = _wired(stage)
    return store, stage, producer


def _deliver(
    stage: Stage, topic: Topic[Any], payload: BaseModel, sku_id: str, event_id: str, ahead: timedelta
) -> None:
    envelope = make_envelope(
        topic, payload, event_id=event_id * 32, sku_id=sku_id, trace_id="t", producer="console"
    )
    envelope = envelope.model_copy(update={"produced_at": utc_now() + ahead})
    tp = TopicPartition(stage.settings.topic_name(topic), 0)
    stage._process_batch({tp: [_record(tp.topic, 0, envelope.model_dump_json().encode())]})


def _accepted_ahead_then_rejected(store: FileStore, stage: Stage, ahead: timedelta) -> ImageMatted:
    """Delivers the gate's acceptance of a render dated ``ahead`` of now, then a reviewer's rejection of
    it dated now; returns the render."""
    matted = matted_item(store, 1, 0)
    sku_id = matted.generated.sku.sku_id
    _deliver(stage, GATE_ACCEPTED, GateAccepted(matted=matted, iou=0.97, checks=[]), sku_id, "a", ahead)
    _deliver(stage, CORRECTION_RESOLVED, resolved(store, matted, "reject"), sku_id, "b", timedelta(0))
    return matted


def test_an_event_from_a_clock_a_day_ahead_is_dead_lettered_and_later_events_are_stored(
    tmp_path: Path,
) -> None:
    store, stage, producer = _trainstore(tmp_path)
    matted = _accepted_ahead_then_rejected(store, stage, timedelta(days=1))
    sku_id, item_id = matted.generated.sku.sku_id, matted.generated.item_id

    [(dlq, value)] = producer.acked
    letter = DeadLetter.model_validate_json(value)
    assert dlq == stage.settings.topic_name(GATE_ACCEPTED) + ".dlq"
    assert letter.reason == "clock_skew" and "ahead of this stage's clock" in letter.detail
    rows = ManifestStore(store, "trainstore").read_sku(sku_id)
    assert rows[item_id].status == "rejected"
    assert stored(ManifestStore(store, "trainstore"), sku_id, item_id) == ([], [])


def test_an_event_within_the_allowed_skew_is_stored(tmp_path: Path) -> None:
    store, stage, producer = _trainstore(tmp_path, trainstore_max_clock_ahead_s=120)
    matted = matted_item(store, 1, 0)
    sku_id = matted.generated.sku.sku_id

    accepted = GateAccepted(matted=matted, iou=0.97, checks=[])
    _deliver(stage, GATE_ACCEPTED, accepted, sku_id, "a", timedelta(seconds=60))

    assert producer.acked == []
    rows = ManifestStore(store, "trainstore").read_sku(sku_id)
    assert rows[matted.generated.item_id].status == "accepted"


def test_every_event_the_stage_consumes_is_refused_when_dated_ahead(tmp_path: Path) -> None:
    # One event of each input topic, each one the stage would store (or record) were it dated now.
    store, stage, producer = _trainstore(tmp_path)
    matted = matted_item(store, 1, 0)
    events: dict[Topic[Any], BaseModel] = {
        GATE_ACCEPTED: GateAccepted(matted=matted, iou=0.97, checks=[]),
        CORRECTION_RESOLVED: resolved(store, matted, "approve_expected"),
        CORRECTION_PENDING: pending_of(matted),
        SKU_CAPTIONED: captioned(store, 1),
    }
    # A topic the stage takes up later needs its event here: this test then covers it too.
    assert sorted(stage.settings.topic_name(topic) for topic in events) == sorted(stage.topics)

    for event_id, (topic, payload) in zip("abcd", events.items(), strict=True):
        _deliver(stage, topic, payload, "SKU-001", event_id, timedelta(days=1))

    letters = [(dlq, DeadLetter.model_validate_json(value).reason) for dlq, value in producer.acked]
    assert letters == [(stage.settings.topic_name(topic) + ".dlq", "clock_skew") for topic in events]
    assert list(store.list_keys("trainstore/")) == []


def test_a_replayed_skewed_acceptance_leaves_a_reviewers_decision_of_the_same_render(tmp_path: Path) -> None:
    # docs/gate-and-trainstore.md: replayed once the clock has caught up, a clock_skew letter is ordered
    # by the time it carries, later than the reviewer's rejection made meanwhile; only the rule that a
    # person's decision beats the gate's for the same render keeps the rejection.
    store, stage, producer = _trainstore(tmp_path)
    matted = _accepted_ahead_then_rejected(store, stage, timedelta(hours=1))
    sku_id, item_id = matted.generated.sku.sku_id, matted.generated.item_id
    [(_, value)] = producer.acked
    original = DeadLetter.model_validate_json(value).original_value_b64

    # The clock caught up: to this stage (a clock an hour on), the letter's time is no longer ahead.
    caught_up = build_stage(
        trainstore=load_settings(TrainstoreSettings, trainstore_max_clock_ahead_s=2 * 3600),
        settings=stage.settings,
    )
    _, replay_producer = _wired(caught_up)
    tp = TopicPartition(caught_up.settings.topic_name(GATE_ACCEPTED), 0)
    caught_up._process_batch({tp: [_record(tp.topic, 1, base64.b64decode(original))]})

    assert replay_producer.acked == []
    rows = ManifestStore(store, "trainstore").read_sku(sku_id)
    assert rows[item_id].status == "rejected"
    assert stored(ManifestStore(store, "trainstore"), sku_id, item_id) == ([], [])
