"""The runtime on the real broker: what a stage does on its way out."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka.structs import TopicPartition

import shared.runtime
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared.config import ConfigError
from shared.runtime import KafkaUnreachable, Stage
from tests.support.bus import (
    create_topics,
    file_store_uri,
    finished_uncommitted,
    isolated_settings,
    passthrough_members,
    produce,
    read_topic,
    running,
    sku_ingested_payloads,
)
from tests.support.polling import wait_for

pytestmark = pytest.mark.kafka


def _ok(stage: Stage, topic: str) -> float:
    return float(stage.metrics.messages.labels(stage.name, topic, "ok")._value.get())


@pytest.mark.slow
def test_inputs_a_revoked_partitions_commit_took_are_counted_when_the_stage_stops_before_its_answer(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first member's commits fail, so its finished inputs wait uncommitted; a second member joins,
    and the rebalance listener sends the offsets of the partitions that move (``commit_async``). The
    first member then stops before its next poll, which is where kafka-python runs a commit's callback:
    the broker took the offsets, so the next holder did not redo those inputs, and nobody counted them.
    """
    settings = isolated_settings(
        kafka_bootstrap,
        file_store_uri(tmp_path),
        max_poll_records=5,
        retry_backoff_initial_s=600.0,  # no idle retry of the failed commits: only the listener's goes
        retry_backoff_max_s=600.0,
    )
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=4)
    topic = settings.topic_name(SKU_INGESTED)
    first, second, handled = passthrough_members(settings, "stopping")
    moved: list[TopicPartition] = []
    revoke = shared.runtime._RebalanceListener.on_partitions_revoked

    def revoke_then_stop(listener: Any, revoked: Sequence[TopicPartition]) -> None:
        revoke(listener, revoked)
        if listener._stage is first and revoked and not first._stop.is_set():
            moved.extend(revoked)
            first.stop()  # the loop ends after this poll: the commit's answer comes after it

    monkeypatch.setattr(shared.runtime._RebalanceListener, "on_partitions_revoked", revoke_then_stop)
    returned: list[int] = []
    first_run = threading.Thread(target=lambda: returned.append(first.run(install_signal_handlers=False)))
    first_run.start()
    try:
        earlier = finished_uncommitted(first, handled)

        with running(second):
            first_run.join(timeout=90)
            assert not first_run.is_alive() and returned == [0]
            assert moved, "the second member took partitions"
            later = produce(
                settings, SKU_INGESTED, list(sku_ingested_payloads(first.store, 8, prefix="LATER"))
            )
            wait_for("every later input", lambda: set(later) <= {event_id for _, event_id in handled})
    finally:
        first.stop()
        first_run.join(timeout=90)

    inputs = read_topic(kafka_bootstrap, topic, expect=len(earlier) + len(later))
    on_moved = {
        json.loads(r.value)["event_id"]
        for r in inputs
        if TopicPartition(r.topic, r.partition) in moved and json.loads(r.value)["event_id"] in set(earlier)
    }
    assert on_moved
    redone = {event_id for label, event_id in handled if label == "second"}
    assert not redone & on_moved, "the listener's commit went through: nobody redid those inputs"
    # Counted where they were finished, once the broker took their offsets: before, the answer came after
    # the stage's last poll, and nobody counted them.
    assert _ok(first, topic) == len(on_moved)


def _stops_on_sigterm(stage: Stage) -> int:
    """Run ``stage`` on this (the main) thread, as ``skuforge run`` does, and SIGTERM it once it is ready."""

    def sigterm_once_ready() -> None:
        wait_for("the stage to join its group", stage.ready)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=sigterm_once_ready, daemon=True).start()
    return stage.run(install_signal_handlers=True, serve_health=False)


def _stops_by_stop(stage: Stage) -> int:
    with running(stage):
        wait_for("the stage to join its group", stage.ready)
    return 0


@pytest.mark.parametrize("way_out", ["stop", "SIGTERM", "refused session timeout", "no broker"])
def test_a_stage_runs_its_stop_actions_once_on_every_way_out(
    kafka_bootstrap: str, tmp_path: Path, way_out: str
) -> None:
    """A stage's handlers may hold what must be closed (the generator's Triton clients and worker threads):
    before, nothing ran when the stage stopped, and nothing closed them."""
    by_way_out: dict[str, dict[str, Any]] = {
        "refused session timeout": {"session_timeout_ms": 3_600_000},  # over the broker's 30 min: fatal
        "no broker": {"kafka_bootstrap": "127.0.0.1:1"},
    }
    overrides = by_way_out.get(way_out, {})
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), **overrides)
    if way_out != "no broker":
        create_topics(settings, SKU_INGESTED, partitions=1)
    stage = Stage("closer", settings=settings)
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    closed: list[str] = []
    stage.on_stop(lambda: closed.append("opened first"))

    @stage.on_stop
    def fails() -> None:
        closed.append("fails")
        raise RuntimeError("a close that fails does not keep the others from running")

    stage.on_stop(lambda: closed.append("opened last"))

    if way_out == "stop":
        assert _stops_by_stop(stage) == 0
    elif way_out == "SIGTERM":
        assert _stops_on_sigterm(stage) == 0
    elif way_out == "refused session timeout":
        with pytest.raises(ConfigError, match="SKUFORGE_SESSION_TIMEOUT_MS"):
            stage.run(install_signal_handlers=False, serve_health=False)
    else:
        with pytest.raises(KafkaUnreachable):
            stage.run(install_signal_handlers=False, serve_health=False)
    assert closed == ["opened last", "fails", "opened first"]
