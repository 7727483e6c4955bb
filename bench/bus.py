"""Bus benchmark: the runtime's throughput against raw kafka-python on the same broker.

Both sides do the same job on the same input partitions — poll, produce each record to an output
topic, flush (acks=all), commit — so the ratio is the runtime's own overhead (decode, validate,
envelope, metrics). Runs alternate (raw, runtime, raw, runtime, ...) and the medians are compared.
Also measures the broker's cold start (fresh KRaft data dir to ready). Writes bench/results/bus.json;
a run with any option other than its default (a smoke ``--events 1000``) needs ``--out FILE``.

    python -m bench.bus [--events 20000] [--rounds 3] [--partitions 3] [--batch 500] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata

from bench.committed import check_out
from bench.events import abandon, produce, sku_ingested_payloads
from bench.replicas import count_records
from bench.rounds import median_round_ratio
from devstack.broker import LocalKafka, free_port
from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import SKU_INGESTED, Topic
from shared.argtypes import json_file_text, path_argument, positive_int
from shared.bus import ensure_topics, kafka_connection, make_producer
from shared.commands import run_command
from shared.config import Settings, load_settings
from shared.runtime import Context, Emit, Stage

RESULTS = Path(__file__).parent / "results"
BENCH_OUT = Topic("bench.out", 1, SkuIngested)


def _settings(broker: LocalKafka, store_uri: str, batch: int) -> Settings:
    """A round's settings: ``broker`` (the bench's own), a fresh namespace and group."""
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        **broker.connection,
        topic_namespace=f"b{tag}.",
        consumer_group_prefix=f"bench{tag}",
        store_uri=store_uri,
        metrics_port=0,
        max_poll_records=batch,
        log_level="WARNING",
    )


# A round waits this long for its next event before it gives up: it looped for ever when its input
# never came (a consumer that never got its records; seen once in CI on a loaded 2-core machine).
ROUND_IDLE_TIMEOUT_S = 60.0


def run_raw(settings: Settings, events: int, *, idle_timeout_s: float = ROUND_IDLE_TIMEOUT_S) -> float:
    """Plain kafka-python, with the runtime's producer: poll, produce, flush, commit; returns events/s.
    Raises ``TimeoutError`` when no event arrives for ``idle_timeout_s``."""
    source, sink = settings.topic_name(SKU_INGESTED), settings.topic_name(BENCH_OUT)
    consumer = KafkaConsumer(
        source,
        **kafka_connection(settings),
        group_id=settings.consumer_group_prefix + ".raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
    )
    try:
        # The runtime's producer (acks=all, idempotent, linger 5 ms), so the ratio is the runtime's
        # overhead alone; and built as the runtime builds it, off the main thread, where kafka-python's
        # bootstrap dropped a Ctrl-C that came while it connected.
        producer = make_producer(settings, client_id="bench-raw")
        try:
            done, started, last = 0, None, time.monotonic()
            while done < events:
                batch = consumer.poll(timeout_ms=200)
                if not batch:
                    if time.monotonic() - last > idle_timeout_s:
                        raise TimeoutError(
                            f"the raw round had {done} of {events} events and no other came on {source} for "
                            f"{idle_timeout_s:g} s"
                        )
                    continue
                last = time.monotonic()
                started = started or time.perf_counter()
                offsets = {}
                for tp, records in batch.items():
                    for record in records:
                        producer.send(sink, key=record.key, value=record.value)
                    offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
                    done += len(records)
                producer.flush()
                consumer.commit(offsets)
            elapsed = time.perf_counter() - (started or time.perf_counter())
        except BaseException:
            abandon(producer)
            raise
        producer.close()
    finally:
        # Also when the round fails or is stopped: a consumer left open stayed in its group,
        # heartbeating, for as long as the process ran.
        consumer.close()
    return events / elapsed


def run_runtime(settings: Settings, events: int, *, idle_timeout_s: float = ROUND_IDLE_TIMEOUT_S) -> float:
    """The skuforge runtime with a forwarding handler; returns events/s. Raises ``TimeoutError`` when
    no output comes for ``idle_timeout_s``, ``RuntimeError`` when the stage stops before the last."""
    stage = Stage("bench", settings=settings)
    first_seen: list[float] = []

    @stage.handler(SKU_INGESTED)
    def forward(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
        if not first_seen:
            first_seen.append(time.perf_counter())
        return [Emit(BENCH_OUT, event.payload, key="out")]

    thread = threading.Thread(
        target=stage.run, kwargs={"install_signal_handlers": False, "serve_health": False}
    )
    thread.start()
    sink = settings.topic_name(BENCH_OUT)
    try:
        # As the raw round: it waited for ever for outputs that never came (an input never read, a
        # stage that had died on its thread).
        done, last = 0, time.monotonic()
        while done < events:
            counted = count_records(settings, [sink])
            if counted > done:
                done, last = counted, time.monotonic()
            elif not thread.is_alive():
                raise RuntimeError(f"the runtime round's stage stopped with {done} of {events} events done")
            elif time.monotonic() - last > idle_timeout_s:
                raise TimeoutError(
                    f"the runtime round had {done} of {events} events and no other came on {sink} for "
                    f"{idle_timeout_s:g} s"
                )
            else:
                time.sleep(0.05)
        finished = time.perf_counter()
    finally:
        # Also on Ctrl-C: the stage's thread is no daemon, and the interpreter waited for it for ever.
        stage.stop()
        thread.join()
    return events / (finished - first_seen[0])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its figures to ``--out`` (default bench/results/bus.json)."""
    return run_command("python -m bench.bus", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bus",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=positive_int, default=20_000, help="default 20000")
    parser.add_argument("--rounds", type=positive_int, default=3, help="default 3")
    parser.add_argument("--partitions", type=positive_int, default=3, help="default 3")
    parser.add_argument("--batch", type=positive_int, default=500, help="default 500")
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS / "bus.json",
        help="results JSON (default bench/results/bus.json, the committed run's; a run with any other "
        "option needs another)",
    )
    args = parser.parse_args(argv)
    # The committed file is the default run's (`make bench`): a smoke run (`--events 1000`) went over it.
    check_out(parser, args, RESULTS / "bus.json")

    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalKafka(Path(tmp) / "kafka", port=free_port(), controller_port=free_port())
        broker.start()
        try:
            assert broker.cold_start_s is not None  # set once start() returns
            cold_start_s = broker.cold_start_s
            raw, runtime = [], []
            for _ in range(args.rounds):
                for kind in ("raw", "runtime"):
                    settings = _settings(broker, f"file://{tmp}/store", args.batch)
                    ensure_topics(settings, [SKU_INGESTED, BENCH_OUT], partitions=args.partitions)
                    from shared.store import open_store

                    payloads: list[Any] = sku_ingested_payloads(
                        open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"), args.events
                    )
                    produce(settings, SKU_INGESTED, payloads)
                    if kind == "raw":
                        raw.append(run_raw(settings, args.events))
                    else:
                        runtime.append(run_runtime(settings, args.events))
                    print(f"{kind}: {(raw if kind == 'raw' else runtime)[-1]:.0f} events/s", flush=True)
        finally:
            broker.stop()

    raw_median, runtime_median = statistics.median(raw), statistics.median(runtime)
    result = {
        "runtime_events_per_s": round(runtime_median, 1),
        "raw_events_per_s": round(raw_median, 1),
        # Per round, each runtime run against the raw run beside it (not a ratio of medians of
        # different rounds).
        "ratio_vs_raw": median_round_ratio(runtime, raw, digits=3),
        "broker_cold_start_s": round(cold_start_s, 2),
        "target_ratio_vs_raw": 0.7,
        "runs": {
            "raw_events_per_s": [round(x, 1) for x in raw],
            "runtime_events_per_s": [round(x, 1) for x in runtime],
        },
        "setup": {
            "events_per_run": args.events,
            "rounds": args.rounds,
            "partitions": args.partitions,
            "max_poll_records": args.batch,
            "work": "poll, produce each record, flush (acks=all), commit",
        },
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{_cpu_count()} cores, Python {platform.python_version()}, single-node Kafka on loopback",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json_file_text(result, label=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(json.dumps(result, indent=2))
    return 0


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
