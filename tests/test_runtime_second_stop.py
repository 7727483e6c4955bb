"""A stage stopping gracefully (its last commit, closing its Kafka clients) ends at once on a second
Ctrl-C or SIGTERM, as a user who will not wait expects; on the real broker, the stage in a child process."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.bus import file_store_uri
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
