"""bench/bus.py and bench/scale.py stop on Ctrl-C while a Kafka producer of theirs connects (the raw
round's consumer, on the real broker, has joined by then), and a round that fails, or whose input never
comes, cleans up."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError

from bench.bus import BENCH_OUT, run_raw, run_runtime
from bench.replicas import group_assignment
from schemas.topics import SKU_INGESTED
from shared.store import open_store
from tests.support.bus import create_topics, file_store_uri, isolated_settings, produce, sku_ingested_payloads
from tests.support.signals import HELD_IN_THE_CONNECTION, stopped

ROOT = Path(__file__).resolve().parent.parent

# The raw side of the bus benchmark, held inside the task that makes its producer's connection.
RAW_ROUND_HELD_IN_THE_CONNECTION = (
    HELD_IN_THE_CONNECTION
    + """
from bench.bus import run_raw
from tests.support.bus import isolated_settings

run_raw(isolated_settings(sys.argv[1], sys.argv[2]), 1)
"""
)

# The benches' input step (bench/bus.py's rounds, bench/scale.py's backlog), with the producing of the
# bench named by sys.argv[3], held inside the task that makes its producer's connection.
INPUT_HELD_IN_THE_CONNECTION = (
    HELD_IN_THE_CONNECTION
    + """
import importlib
from schemas.topics import SKU_INGESTED
from shared.store import open_store
from tests.support.bus import isolated_settings, sku_ingested_payloads

bench = importlib.import_module(sys.argv[3])
settings = isolated_settings(sys.argv[1], sys.argv[2])
store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
bench.produce(settings, SKU_INGESTED, sku_ingested_payloads(store, 1))
"""
)


@pytest.mark.kafka
@pytest.mark.parametrize(
    "held",
    [
        # The raw round built its KafkaProducer on the main thread, where kafka-python's bootstrap runs
        # its event loop and drops the KeyboardInterrupt a task raises: Ctrl-C was lost, and the
        # benchmark held on in the connection, then went on with the round.
        pytest.param([RAW_ROUND_HELD_IN_THE_CONNECTION], id="bus-raw-round"),
        # The input of each round was produced the same way (by the tests' own helper).
        pytest.param([INPUT_HELD_IN_THE_CONNECTION, "bench.bus"], id="bus-input"),
        pytest.param([INPUT_HELD_IN_THE_CONNECTION, "bench.scale"], id="scale-input"),
    ],
)
def test_ctrl_c_while_a_producer_connects_stops_the_benchmark(
    tmp_path: Path, kafka_bootstrap: str, held: list[str]
) -> None:
    script, *args = held
    ended = stopped(
        [sys.executable, "-c", script, kafka_bootstrap, file_store_uri(tmp_path / "store"), *args],
        [("connecting", signal.SIGINT)],
        lost="Ctrl-C was lost: the bench still ran 20 s later, waiting on the broker",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    # An uncaught KeyboardInterrupt ends Python by SIGINT.
    assert ended.returncode == -signal.SIGINT, ended.err
    assert "KeyboardInterrupt" in ended.err


# The runtime side of the bus benchmark, waiting for outputs that never come (no input was produced),
# saying when its stage has started.
RUNTIME_ROUND_WAITING = """
import logging, sys
from bench.bus import BENCH_OUT, run_runtime
from schemas.topics import SKU_INGESTED
from tests.support.bus import create_topics, isolated_settings

def says_it_started(record):
    if record.getMessage() == "stage started":
        print("started", flush=True)
    return False

logging.getLogger("skuforge.runtime").setLevel(logging.INFO)
logging.getLogger("skuforge.runtime").addFilter(says_it_started)
settings = isolated_settings(sys.argv[1], sys.argv[2])
create_topics(settings, SKU_INGESTED, BENCH_OUT)
run_runtime(settings, 1)
"""


@pytest.mark.kafka
def test_ctrl_c_during_the_runtime_round_stops_the_bus_benchmark(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    # The round's stage runs on a thread of its own, not a daemon, and only a round that finished
    # stopped it: after Ctrl-C the interpreter waited for that thread for ever, the stage polling on.
    ended = stopped(
        [sys.executable, "-c", RUNTIME_ROUND_WAITING, kafka_bootstrap, file_store_uri(tmp_path / "store")],
        [("started", signal.SIGINT)],
        lost="Ctrl-C did not end the bench: its stage thread ran on 30 s later",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        within_s=30,
    )
    assert ended.returncode == -signal.SIGINT, ended.err


@pytest.mark.kafka
def test_a_raw_round_that_fails_leaves_its_group_and_closes_its_producer(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    # The raw round closed its consumer and producer only when it finished: one that raised (here the
    # output topic is missing, and the send gives up on its metadata) left its consumer in the group,
    # heartbeating, and its producer's sender thread running in the process that goes on.
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"), flush_timeout_s=1.0)
    create_topics(settings, SKU_INGESTED)  # and not BENCH_OUT
    produce(
        settings,
        SKU_INGESTED,
        sku_ingested_payloads(open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), 1),
    )
    # Its send gives up on the missing topic; or, should its consumer not get the record in time (once
    # in CI, under load, it polled for ten minutes), the round gives up waiting: either way it raises
    # with both clients open.
    with pytest.raises((KafkaTimeoutError, TimeoutError)):
        run_raw(settings, 1, idle_timeout_s=30)
    group = settings.consumer_group_prefix + ".raw"
    assert group_assignment(settings, group) == {}, "the raw consumer is still in its group"
    senders = [t.name for t in threading.enumerate() if t.name == "bench-raw-network-thread" and t.is_alive()]
    assert senders == [], "the raw round's producer was never closed"


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("run_round", "member"),
    [
        # It polled for ever: no event ever came, and the bench hung with its consumer in the group.
        pytest.param(run_raw, "raw", id="raw"),
        # The runtime round counted the output for ever, its stage polling on.
        pytest.param(run_runtime, "bench", id="runtime"),
    ],
)
def test_a_round_whose_input_never_comes_gives_up_and_leaves_its_group(
    tmp_path: Path, kafka_bootstrap: str, run_round: Callable[..., float], member: str
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, BENCH_OUT)  # and nothing produced
    with pytest.raises(TimeoutError, match="0 of 1 events and no other came"):
        run_round(settings, 1, idle_timeout_s=3)
    assert group_assignment(settings, f"{settings.consumer_group_prefix}.{member}") == {}
    client = "bench-raw" if member == "raw" else "bench"
    senders = [t.name for t in threading.enumerate() if t.name == f"{client}-network-thread" and t.is_alive()]
    assert senders == [], f"the {member} round's producer was never closed"
