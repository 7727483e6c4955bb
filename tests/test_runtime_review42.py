"""The runtime's way out while no broker answers its clients' bootstrap, and once another member took
its static group membership."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared.config import ConfigError
from shared.runtime import Stage
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    passthrough_members,
    produce,
    running,
    sku_ingested_payloads,
)
from tests.support.polling import wait_for

NO_BROKER = "127.0.0.1:1"  # nothing listens: kafka-python tries to bootstrap for 30 s


def _stage_with_no_broker(tmp_path: Path) -> tuple[Stage, list[str]]:
    stage = Stage("unreached", settings=isolated_settings(NO_BROKER, file_store_uri(tmp_path)))
    stage.handler(SKU_INGESTED)(lambda event, ctx: [])
    closed: list[str] = []
    stage.on_stop(lambda: closed.append("closed"))
    return stage, closed


def test_a_sigterm_while_no_broker_answers_stops_the_stage_with_0(tmp_path: Path) -> None:
    """The first SIGTERM only asks the stage to stop, and the stage waited out the consumer's bootstrap
    (30 s), then ended as if it had not been asked: "cannot reach Kafka", exit 1. `skuforge up` stops a
    service after 20 s, and reported the stage killed."""
    stage, closed = _stage_with_no_broker(tmp_path)
    default = signal.getsignal(signal.SIGTERM)

    def sigterm_once_heard() -> None:
        wait_for("the stage's SIGTERM handler", lambda: signal.getsignal(signal.SIGTERM) is not default)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=sigterm_once_heard, daemon=True).start()
    assert stage.run(install_signal_handlers=True, serve_health=False) == 0
    assert closed == ["closed"]


def test_a_stop_while_no_broker_answers_ends_a_stage_run_on_another_thread_with_0(tmp_path: Path) -> None:
    """``stop()`` of a stage that runs on a thread of its own (as tests and embedding callers run one)."""
    stage, closed = _stage_with_no_broker(tmp_path)
    ended: list[int | BaseException] = []

    def run() -> None:
        try:
            ended.append(stage.run(install_signal_handlers=False, serve_health=False))
        except BaseException as exc:
            ended.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    stage.stop()
    runner.join(timeout=90)
    assert ended == [0]
    assert closed == ["closed"]


@pytest.mark.kafka
def test_a_member_whose_static_id_another_member_took_stops_naming_the_setting(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two replicas given one ``SKUFORGE_GROUP_INSTANCE_ID``: the broker hands the one that joins last
    the partitions, and fences the other. kafka-python only stops that one's heartbeat: before, it went
    on fetching and handling every input beside the member that owns them, logged "commit failed" at
    each batch, and kept each batch's inputs (outputs included) in memory for a commit that never came."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), group_instance_id="twin")
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    fenced, owner, handled = passthrough_members(settings, "twins")
    ended: list[BaseException | int] = []

    def run_fenced() -> None:
        try:
            ended.append(fenced.run(install_signal_handlers=False, serve_health=False))
        except BaseException as exc:
            ended.append(exc)

    def owned() -> list[str]:
        return [event_id for label, event_id in handled if label == "second"]

    threading.Thread(target=run_fenced, daemon=True).start()
    wait_for("the first member to join", fenced.ready)
    with running(owner):
        wait_for("the second member to join", owner.ready)
        inputs = produce(settings, SKU_INGESTED, list(sku_ingested_payloads(owner.store, 5)))
        wait_for("the owner to handle every input", lambda: len(owned()) == len(inputs))
        wait_for("the fenced member to stop", lambda: ended)
    assert isinstance(ended[0], ConfigError), ended[0]
    assert "SKUFORGE_GROUP_INSTANCE_ID=twin" in str(ended[0])
    assert owned() == inputs
    assert not fenced._uncommitted
