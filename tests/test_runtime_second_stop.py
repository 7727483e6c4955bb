"""A stage stopping gracefully (its last commit, closing its Kafka clients) ends at once on a second
Ctrl-C or SIGTERM, as a user who will not wait expects; a hang-up (SIGHUP: the terminal of `skuforge run`
closed) stops it as gracefully as SIGTERM does. On the real broker, the stage in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka.structs import TopicPartition

from shared.signals import hang_up_as_sigterm, heard
from tests.support.bus import file_store_uri
from tests.support.kafka import session_admin
from tests.support.signals import stopped

ROOT = Path(__file__).resolve().parent.parent

# A stage that says when it has started, and holds its producer's close() (as a broker that does not
# acknowledge the last batches holds it, for SKUFORGE_FLUSH_TIMEOUT_S) after saying so.
STAGE_HELD_IN_THE_CLOSE = """
import logging, sys, time
from schemas.topics import SKU_INGESTED
from shared.runtime import Stage
from tests.support.bus import create_topics, isolated_settings

def says_it_started(record):
    if record.getMessage() == "stage started":
        print("started", flush=True)
    return False

def holds_the_close(record):
    if "Closing the Kafka producer" in record.getMessage():
        print("closing", flush=True)
        time.sleep(60)
    return False

for name, check in (("skuforge.runtime", says_it_started), ("kafka.producer.kafka", holds_the_close)):
    logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger(name).addFilter(check)

settings = isolated_settings(sys.argv[1], sys.argv[2])
create_topics(settings, SKU_INGESTED)
stage = Stage("stopper", settings=settings)
stage.handler(SKU_INGESTED)(lambda event, ctx: [])
sys.exit(stage.run(serve_health=False))
"""


@pytest.mark.kafka
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_second_stop_while_the_stage_closes_its_producer_ends_it(
    tmp_path: Path, kafka_bootstrap: str, stop: signal.Signals
) -> None:
    # The second stop only set the stop flag again: the stage waited out its producer's close (up to
    # SKUFORGE_FLUSH_TIMEOUT_S with the broker away), with the user pressing Ctrl-C in vain.
    ended = stopped(
        [sys.executable, "-c", STAGE_HELD_IN_THE_CLOSE, kafka_bootstrap, file_store_uri(tmp_path / "store")],
        # The first: finish, commit, close; the second: now.
        [("started", stop), ("closing", stop)],
        lost=f"the second {stop.name} was lost: the stage still closed its producer 20 s later",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert ended.returncode != 0, ended.err  # not the 0 of a stop that finished


# A stage with one record to handle, which says when it handles it (naming its topic and group) and
# finishes it only once it has heard the stop, which therefore comes while the record is in hand.
# With --nohup it starts with SIGHUP ignored, as `nohup` starts a command.
STAGE_HANDLING_A_RECORD = """
import signal, sys, threading, time
from schemas.topics import SKU_INGESTED
from shared.runtime import Stage
from shared.store import open_store
from tests.support.bus import create_topics, isolated_settings, produce, sku_ingested_payloads

if "--nohup" in sys.argv:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
settings = isolated_settings(sys.argv[1], sys.argv[2])
create_topics(settings, SKU_INGESTED, partitions=1)
store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
produce(settings, SKU_INGESTED, sku_ingested_payloads(store, 1))
stage = Stage("hangup", settings=settings)
group = f"{settings.consumer_group_prefix}.{stage.name}"
stop_heard = threading.Event()
stop = stage.stop
stage.stop = lambda: (stop_heard.set(), stop())[1]

@stage.handler(SKU_INGESTED)
def handle(event, ctx):
    print("handling", settings.topic_name(SKU_INGESTED), group, flush=True)
    while not stop_heard.is_set():
        time.sleep(0.05)
    return []

sys.exit(stage.run(serve_health=False))
"""


@pytest.mark.kafka
@pytest.mark.parametrize("under_nohup", [False, True], ids=["hang-up", "hang-up under nohup, then SIGTERM"])
def test_a_hang_up_stops_a_stage_as_sigterm_does_committing_the_record_in_hand(
    tmp_path: Path, kafka_bootstrap: str, under_nohup: bool
) -> None:
    # SIGHUP kept its default: the stage died where it stood (exit -1), its record in hand uncommitted
    # (redone by the next run) and its Kafka clients never closed (its group waited out the session).
    # Under nohup it stays ignored: the SIGTERM after it is the stop, heard as the first (a second one
    # would end the stage where it stands, its record uncommitted).
    handling: list[str] = []

    def handling_the_record(run: subprocess.Popen[str]) -> None:
        assert run.stdout is not None
        line = run.stdout.readline().split()
        assert line[:1] == ["handling"], (line, run.communicate())
        handling.extend(line[1:])

    store_uri = file_store_uri(tmp_path / "store")
    ended = stopped(
        [
            sys.executable,
            "-c",
            STAGE_HANDLING_A_RECORD,
            kafka_bootstrap,
            store_uri,
            *(["--nohup"] if under_nohup else []),
        ],
        [
            (handling_the_record, signal.SIGHUP),
            *([(lambda run: None, signal.SIGTERM)] if under_nohup else []),
        ],
        lost="the stage did not stop within 20 s of its stop",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert ended.returncode == 0, ended.err
    topic, group = handling
    committed = session_admin(kafka_bootstrap).list_group_offsets(group).get(group, {})
    assert committed[TopicPartition(topic, 0)].offset == 1, committed


def test_a_server_under_nohup_still_ignores_hang_ups() -> None:
    # `skuforge serve console` and `serve generator` hear SIGHUP as SIGTERM (tests/test_console_kafka.py,
    # tests/test_generator_triton.py), but not one `nohup` started them to ignore.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        hang_up_as_sigterm()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize(
    ("signum", "handler", "expected"),
    [
        (signal.SIGHUP, signal.SIG_IGN, False),  # nohup: the stack, stage or server outlives its terminal
        (signal.SIGHUP, signal.SIG_DFL, True),
        (signal.SIGTERM, signal.SIG_IGN, True),  # only a hang-up may be ignored: SIGTERM is how they stop
        (signal.SIGTERM, signal.SIG_DFL, True),
    ],
)
def test_only_a_hang_up_left_ignored_is_not_heard(
    signum: signal.Signals, handler: signal.Handlers, expected: bool
) -> None:
    # The one rule of the stage (shared/runtime.py), the supervisor (devstack/supervisor.py) and the
    # servers (hang_up_as_sigterm), spelled once.
    previous = signal.signal(signum, handler)
    try:
        assert heard(signum) is expected
    finally:
        signal.signal(signum, previous)
