"""The runtime's way out while no broker answers its clients' bootstrap."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from schemas.topics import SKU_INGESTED
from shared.runtime import Stage
from tests.support.bus import file_store_uri, isolated_settings
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
