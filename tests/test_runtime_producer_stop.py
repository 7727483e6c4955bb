"""A stop while the stage rebuilds its producer mid-run (the last one stopped for good) and no broker
answers ends the rebuild at once: before, the new producer was made without the stage's stop, so a
SIGTERM then waited out kafka-python's 30 s bootstrap, past `skuforge up`'s 20 s grace."""

from __future__ import annotations

from pathlib import Path

from devstack.broker import free_port
from shared.bus import StoppedBootstrapping
from shared.config import load_settings
from shared.runtime import Stage
from tests.support.bus import file_store_uri


def test_a_stopped_stage_rebuilding_its_producer_without_a_broker_gives_up_the_bootstrap(
    tmp_path: Path,
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    stage = Stage(
        "review", settings=load_settings(store_uri=file_store_uri(tmp_path), kafka_bootstrap=nobody)
    )
    stage.stop()
    assert stage._producer is None  # as after a producer that stopped for good
    error = stage._send_alone("review.out", b"SKU-1", b"{}")
    assert isinstance(error, StoppedBootstrapping), error
