"""An event keyed by another SKU than the one it carries is dead-lettered by the runtime, at the first
stage that reads it, not after every stage downstream has run on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kafka.structs import TopicPartition
from pydantic import BaseModel

from schemas.envelope import DeadLetter
from schemas.events import GateAccepted, subject_sku_id
from schemas.topics import CORRECTION_RESOLVED, GATE_ACCEPTED, IMAGE_GENERATED, SKU_INGESTED, Topic
from shared.bus import make_envelope
from shared.config import load_settings
from shared.runtime import Emit, Stage
from shared.store import FileStore
from tests.support.bus import sku_ingested_payloads
from tests.support.gate import matted_item, resolved
from tests.support.runtime import _record, _wired


def _payloads(store: FileStore) -> list[tuple[Topic[Any], BaseModel]]:
    matted = matted_item(store, 1, 0)
    return [
        (SKU_INGESTED, sku_ingested_payloads(store, 1)[0]),
        (IMAGE_GENERATED, matted.generated),
        (GATE_ACCEPTED, GateAccepted(matted=matted, iou=0.97, checks=[])),
        (CORRECTION_RESOLVED, resolved(store, matted, "reject")),
    ]


@pytest.mark.parametrize("index", range(4), ids=["ingested", "generated", "accepted", "resolved"])
def test_an_event_keyed_by_another_sku_is_dead_lettered_before_its_handler_runs(
    tmp_path: Path, index: int
) -> None:
    # Before: only the trainstore compared the two. The event ran on another SKU's partition through the
    # captioner, the generator (GPU time), matting and the gate, and every variant was dead-lettered at
    # the end; the lora-trainer recorded it with no check at all.
    store = FileStore(tmp_path / "store")
    topic, payload = _payloads(store)[index]
    stage = Stage("review", settings=load_settings(store_uri=f"file://{tmp_path / 'store'}"))
    handled: list[str] = []

    @stage.handler(topic)
    def forward(event: object, ctx: object) -> list[Emit]:
        handled.append("called")
        return []

    consumer, producer = _wired(stage)
    tp = TopicPartition(stage.settings.topic_name(topic), 0)
    sku_id = subject_sku_id(payload)
    assert sku_id is not None
    records = [
        _record(
            tp.topic,
            offset,
            make_envelope(
                topic, payload, event_id=f"{offset + 1:032x}", sku_id=key, trace_id="t", producer="test"
            )
            .model_dump_json()
            .encode(),
        )
        for offset, key in enumerate(["SKU-OTHER", sku_id])
    ]
    stage._process_batch({tp: records})

    assert handled == ["called"]  # only the rightly keyed one
    [(dlq, value)] = producer.acked
    letter = DeadLetter.model_validate_json(value)
    assert dlq == tp.topic + ".dlq" and letter.reason == "sku_mismatch"
    assert f"keyed 'SKU-OTHER' but carries SKU {sku_id!r}" in letter.detail
    assert consumer.committed == {tp: 2}
