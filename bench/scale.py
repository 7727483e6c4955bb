"""Scale benchmark: matting throughput with 1 and 2 replicas, and how long partitions stall on a rebalance.

Real ``skuforge run matting`` processes (the committed U2-NetP, one ONNX Runtime thread each, like a
pod with one CPU) on a real single-node Kafka, 6 partitions, rendered 256 px product images.

* ``matting_images_per_min_r1`` / ``_r2``: the members join first, then a backlog of images is
  produced; images/min from the first to the last matted output (record timestamps), so process
  start-up is not counted. Rounds alternate r1, r2, r1, r2...; the medians are reported.
* ``rebalance_pause_s_join``: one member works through a backlog; a second joins. Seconds from the
  moment the group lists the new member (its JoinGroup starts the rebalance; the group is polled about
  every 0.1 s) until the new member's first output on a partition it took over.
* ``rebalance_pause_s_kill``: two members work through a backlog; one is killed with SIGKILL. Seconds
  from the kill until the survivor's first output on one of the dead member's partitions (it gets them
  once the session timeout has expired).

``pauses`` splits each into: until the moved partitions had their new owner (the rebalance alone),
until the first output on one of them, and until the new owner had produced on each of them (which
adds its working through them one batch at a time). ``steady_max_partition_gap_s`` is the longest
ordinary gap between two outputs of one partition in the r2 rounds, for comparison.

Uses the cluster of ``SKUFORGE_KAFKA_BOOTSTRAP`` when set, reached as the services reach it (its
``SKUFORGE_KAFKA_SECURITY_PROTOCOL``, SASL login and CA, given to the members too), else starts a broker
of its own. Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from bench.committed import check_out
from bench.events import produce
from bench.replicas import Member, count_records, generated_images, group_assignment, wait_until
from devstack.broker import LocalKafka, free_port
from schemas.topics import IMAGE_GENERATED, IMAGE_MATTED
from shared.argtypes import folder_problem, int_between, json_file_text, path_argument, positive_int
from shared.bus import ensure_topics, kafka_connection
from shared.commands import run_command
from shared.config import Settings, load_settings
from shared.store import open_store

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 6
MEMBER_ENV = {"SKUFORGE_MATTING_THREADS": "1", "SKUFORGE_MATTING_MAX_BATCH": "4"}
# The members' own bounds (Settings'), checked at parse time: only the kill round, the last, uses it.
_TIMEOUT_RULES = {type(rule).__name__: rule for rule in Settings.model_fields["session_timeout_ms"].metadata}
SESSION_TIMEOUT_MS = int_between(_TIMEOUT_RULES["Ge"].ge, _TIMEOUT_RULES["Le"].le)
SESSION_TIMEOUT_DEFAULT_MS: int = Settings.model_fields["session_timeout_ms"].default


def _settings(cluster: Mapping[str, Any], store_uri: str, session_timeout_ms: int) -> Settings:
    """A round's settings: the Kafka connection ``cluster`` gives (none: the shell's), a fresh
    namespace and group."""
    tag = os.urandom(4).hex()
    return load_settings(
        **cluster,
        topic_namespace=f"s{tag}.",
        consumer_group_prefix=f"scale{tag}",
        store_uri=store_uri,
        max_poll_records=4,
        session_timeout_ms=session_timeout_ms,
    )


def _outputs(settings: Settings, topic: str, expect: int, timeout_s: float) -> list[tuple[bytes, float]]:
    """(key, timestamp_s) of every record of ``topic``, read until ``expect`` distinct keys are there.

    A member killed before its commit makes the survivor redo some images: their outputs come twice.
    """
    consumer = KafkaConsumer(**kafka_connection(settings), group_id=None, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()])
        consumer.seek_to_beginning()
        records: list[tuple[bytes, float]] = []
        deadline = time.monotonic() + timeout_s
        while len({key for key, _ in records}) < expect:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(records)} outputs on {topic} after {timeout_s:.0f} s")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((record.key, record.timestamp / 1000) for record in batch)
        time.sleep(1.0)  # and what is still in flight
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend((record.key, record.timestamp / 1000) for record in batch)
        return records
    finally:
        consumer.close()


def _input_partitions(settings: Settings, topic: str) -> dict[bytes, int]:
    """key -> partition of the input topic (the outputs carry the same key)."""
    consumer = KafkaConsumer(**kafka_connection(settings), group_id=None, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()])
        consumer.seek_to_beginning()
        end = sum(consumer.end_offsets(list(consumer.assignment())).values())
        keys: dict[bytes, int] = {}
        seen = 0
        while seen < end:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for record in batch:
                    keys[record.key] = tp.partition
                seen += sum(1 for _ in batch)
        return keys
    finally:
        consumer.close()


def _by_partition(outputs: list[tuple[bytes, float]], keys: dict[bytes, int]) -> dict[int, list[float]]:
    times: dict[int, list[float]] = defaultdict(list)
    for key, at in outputs:
        times[keys[key]].append(at)
    return {partition: sorted(values) for partition, values in times.items()}


def _resumed(by_partition: dict[int, list[float]], partitions: set[int], at: float) -> tuple[float, float]:
    """Seconds from ``at`` to the first output on any of ``partitions``, and to the first on each (max).

    A partition whose images were all done before ``at`` had nothing left to resume and is left out.
    """
    firsts = [
        min(t for t in by_partition[p] if t >= at) - at for p in partitions if max(by_partition[p]) >= at
    ]
    if not firsts:
        raise AssertionError("no output after the event: the backlog was too small to measure")
    return min(firsts), max(firsts)


def _wait_for_owner(settings: Settings, group: str, owner: str, partitions: set[int]) -> float:
    """Poll the group (about every 0.1 s) until ``owner`` holds ``partitions``; returns the time.time()."""
    deadline = time.monotonic() + 180
    while True:
        held = {tp.partition for tp in group_assignment(settings, group).get(owner, set())}
        if partitions and partitions <= held:
            return time.time()
        if time.monotonic() > deadline:
            raise MembersStuck(f"{owner} never took partitions {sorted(partitions)}; it holds {sorted(held)}")
        time.sleep(0.1)


class MembersStuck(AssertionError):
    """The members never formed the expected group (each holding partitions)."""


class _Round:
    """One fresh namespace and store, a backlog of ``images`` rendered images ready to produce."""

    def __init__(
        self, cluster: Mapping[str, Any], workdir: Path, images: int, session_timeout_ms: int
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True)
        self.settings = _settings(cluster, f"file://{workdir / 'store'}", session_timeout_ms)
        ensure_topics(self.settings, [IMAGE_GENERATED, IMAGE_MATTED], partitions=PARTITIONS)
        self.payloads = generated_images(
            open_store(self.settings.store_uri, uri_from="SKUFORGE_STORE_URI"), images, tag=workdir.name
        )
        self.group = f"{self.settings.consumer_group_prefix}.matting"
        self.members: list[Member] = []

    def start(self, instance_id: str) -> Member:
        member = Member("matting", self.settings, self.workdir, instance_id=instance_id, extra_env=MEMBER_ENV)
        self.members.append(member)
        return member

    def wait_for_members(self, names: list[str]) -> dict[str, set[TopicPartition]]:
        def shared() -> bool:
            held = group_assignment(self.settings, self.group)
            return all(held.get(name) for name in names) and sum(map(len, held.values())) == PARTITIONS

        try:
            wait_until(shared, 120, f"{names} to share the partitions")
        except AssertionError:
            raise MembersStuck(
                f"{names} did not share the partitions within 120 s: "
                f"{group_assignment(self.settings, self.group)}"
            ) from None
        return group_assignment(self.settings, self.group)

    def produce(self) -> None:
        produce(self.settings, IMAGE_GENERATED, list(self.payloads))

    def outputs(self, timeout_s: float = 900) -> list[tuple[bytes, float]]:
        return _outputs(self.settings, self.settings.topic_name(IMAGE_MATTED), len(self.payloads), timeout_s)

    def partitions_of_outputs(self) -> dict[int, list[float]]:
        keys = _input_partitions(self.settings, self.settings.topic_name(IMAGE_GENERATED))
        return _by_partition(self.outputs(), keys)

    def close(self) -> None:
        for member in self.members:
            if member.process.poll() is None:
                member.stop()


def throughput(cluster: Mapping[str, Any], workdir: Path, replicas: int, images: int) -> tuple[float, float]:
    """Images/min of ``replicas`` members on a backlog, and the longest gap of one partition meanwhile."""
    run = _Round(cluster, workdir, images, 10_000)
    try:
        names = [f"matting-{index}" for index in range(1, replicas + 1)]
        for name in names:
            run.start(name)
        run.wait_for_members(names)
        run.produce()
        outputs = run.outputs()
        stamps = sorted(at for _, at in outputs)
        per_min = (len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60
        by_partition = run.partitions_of_outputs()
        steady_gap = max(b - a for times in by_partition.values() for a, b in itertools.pairwise(times))
        return per_min, steady_gap
    finally:
        run.close()


class Pause(NamedTuple):
    """Seconds after a member joined or died until: the partitions that moved had their new owner
    (``assigned_s``), the new owner produced on one of them (``first_output_s``), on each of them
    (``every_partition_s``, which adds the new owner working through them one batch at a time)."""

    assigned_s: float
    first_output_s: float
    every_partition_s: float


def join_pause(cluster: Mapping[str, Any], workdir: Path, images: int) -> Pause:
    """A second member joins while the first works through a backlog."""
    run = _Round(cluster, workdir, images, 10_000)
    try:
        run.start("matting-1")
        run.wait_for_members(["matting-1"])
        run.produce()
        matted = run.settings.topic_name(IMAGE_MATTED)
        wait_until(lambda: count_records(run.settings, [matted]) >= images // 5, 600, "the first outputs")
        run.start("matting-2")
        # The new member's JoinGroup starts the rebalance: from then on the partitions that move are
        # revoked from the old owner and wait for the new one.
        deadline = time.monotonic() + 180
        while "matting-2" not in group_assignment(run.settings, run.group):
            if time.monotonic() > deadline:
                raise MembersStuck("matting-2 never joined the group")
            time.sleep(0.1)
        joined_at = time.time()
        while not group_assignment(run.settings, run.group).get("matting-2"):
            if time.monotonic() > deadline:
                raise MembersStuck("matting-2 joined but never got partitions")
            time.sleep(0.1)
        moved = {tp.partition for tp in group_assignment(run.settings, run.group)["matting-2"]}
        assigned_at = _wait_for_owner(run.settings, run.group, "matting-2", moved)
        # Outputs from the join until the assignment are the old owner's (finishing what it held
        # before the revocation): counted from joined_at they read as the new owner's, 2.7 s after
        # the join when the partitions were only assigned at 6.0 s. Counted from the assignment, the
        # outputs are the new owner's (observed up to about 0.1 s late: the pause reads a little long).
        first, every = _resumed(run.partitions_of_outputs(), moved, assigned_at)
        waited = assigned_at - joined_at
        return Pause(waited, waited + first, waited + every)
    finally:
        run.close()


def kill_pause(cluster: Mapping[str, Any], workdir: Path, images: int, session_timeout_ms: int) -> Pause:
    """One of two members working through a backlog is killed with SIGKILL."""
    run = _Round(cluster, workdir, images, session_timeout_ms)
    try:
        run.start("matting-1")
        victim = run.start("matting-2")
        held = run.wait_for_members(["matting-1", "matting-2"])
        orphaned = {tp.partition for tp in held["matting-2"]}
        run.produce()
        matted = run.settings.topic_name(IMAGE_MATTED)
        wait_until(lambda: count_records(run.settings, [matted]) >= images // 5, 600, "the first outputs")
        killed_at = time.time()
        victim.kill()
        assigned_at = _wait_for_owner(run.settings, run.group, "matting-1", orphaned)
        first, every = _resumed(run.partitions_of_outputs(), orphaned, killed_at)
        return Pause(assigned_at - killed_at, first, every)
    finally:
        run.close()


def machine(*, external: bool) -> dict[str, Any]:
    """What the figures were measured on; ``external``: on the cluster of ``SKUFORGE_KAFKA_BOOTSTRAP``,
    not a broker of the bench's own."""
    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "kafka_python": version("kafka-python"),
        "onnxruntime": version("onnxruntime"),
        "broker": "the cluster of SKUFORGE_KAFKA_BOOTSTRAP"
        if external
        else "single-node Kafka (KRaft) on loopback",
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/scale.json."""
    return run_command("python -m bench.scale", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=positive_int, default=48, help="images per throughput round (default 48)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=2, help="rounds of r1 and of r2 (alternating) (default 2)"
    )
    parser.add_argument(
        "--pause-images", type=positive_int, default=60, help="backlog of the join and kill runs (default 60)"
    )
    parser.add_argument(
        "--session-timeout-ms",
        type=SESSION_TIMEOUT_MS,
        default=SESSION_TIMEOUT_DEFAULT_MS,
        help="the kill round's members' SKUFORGE_SESSION_TIMEOUT_MS (at least 6000, the broker's minimum; "
        f"default {SESSION_TIMEOUT_DEFAULT_MS}, the setting's)",
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS / "scale.json",
        help="results JSON (default bench/results/scale.json, the committed run's; a run with any other "
        "option than --workdir needs another)",
    )
    parser.add_argument(
        "--workdir",
        type=path_argument("folder"),
        default=Path("var/bench-scale"),
        help="member logs and store (default var/bench-scale)",
    )
    args = parser.parse_args(argv)
    # The committed file is the default run's, which docs/deploy.md cites: a smoke run (`--images 4`)
    # went over it. Checked before minutes of Kafka rounds; a missing folder is made.
    check_out(parser, args, RESULTS / "scale.json", not_in_figures=["workdir"])
    # The first round makes it, after the broker started: a file in its place was a traceback there.
    if problem := folder_problem(args.workdir):
        parser.error(f"--workdir {args.workdir}: {problem}")
    external = os.environ.get("SKUFORGE_KAFKA_BOOTSTRAP", "").strip()
    # A run on another cluster was recorded as on a broker of its own, on loopback.
    info = machine(external=bool(external))
    # Member logs stay in var/bench-scale/<time>/ (evidence when a member misbehaves).
    work = args.workdir / time.strftime("%Y%m%dT%H%M%S")
    incidents: list[dict[str, str]] = []

    def attempt(name: str, measure: Callable[[Path], Any]) -> Any:
        """Run one measurement; a group that never forms is recorded and the run tried once more."""
        try:
            return measure(work / name)
        except MembersStuck as exc:
            incidents.append({"run": name, "what": str(exc), "logs": str(work / name)})
            print(f"{name}: {exc}; trying once more", flush=True)
            return measure(work / f"{name}-again")

    with tempfile.TemporaryDirectory(prefix="skuforge-scale-") as tmp:
        broker = None
        if not external:
            broker = LocalKafka(Path(tmp) / "kafka", port=free_port(), controller_port=free_port())
            broker.start()
        # The shell's cluster, with its security settings; or the bench's own broker, without them.
        cluster = broker.connection if broker is not None else {}
        try:
            rates: dict[int, list[float]] = {1: [], 2: []}
            gaps: list[float] = []
            for round_index in range(args.rounds):
                for replicas in (1, 2):
                    rate, gap = attempt(
                        f"r{replicas}-{round_index}",
                        lambda path, replicas=replicas: throughput(cluster, path, replicas, args.images),  # type: ignore[misc]
                    )
                    rates[replicas].append(rate)
                    if replicas == 2:
                        gaps.append(gap)
                    print(f"r{replicas}: {rate:.1f} images/min", flush=True)
            join = attempt("join", lambda path: join_pause(cluster, path, args.pause_images))
            print(f"join: {join}", flush=True)
            kill = attempt(
                "kill", lambda path: kill_pause(cluster, path, args.pause_images, args.session_timeout_ms)
            )
            print(f"kill: {kill}", flush=True)
        finally:
            if broker is not None:
                broker.stop()
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    result = {
        "matting_images_per_min_r1": round(statistics.median(rates[1]), 1),
        "matting_images_per_min_r2": round(statistics.median(rates[2]), 1),
        "rebalance_pause_s_join": round(join.first_output_s, 2),
        "rebalance_pause_s_kill": round(kill.first_output_s, 2),
        "pauses": {
            "what": "seconds after the event until the moved partitions had their new owner, until the new "
            "owner's first output on one of them (the rebalance_pause_s_* figures), and until it had "
            "produced on each of them",
            "join": {name: round(value, 2) for name, value in join._asdict().items()},
            "kill": {name: round(value, 2) for name, value in kill._asdict().items()},
        },
        "target_rebalance_pause_s_kill": 15.0,
        "steady_max_partition_gap_s": round(max(gaps), 2),
        "runs": {
            "matting_images_per_min_r1": [round(x, 1) for x in rates[1]],
            "matting_images_per_min_r2": [round(x, 1) for x in rates[2]],
        },
        "setup": {
            "images_per_round": args.images,
            "pause_backlog_images": args.pause_images,
            "partitions": PARTITIONS,
            "image_size_px": 256,
            "max_poll_records": 4,
            "member_env": MEMBER_ENV,
            "session_timeout_ms": args.session_timeout_ms,
            "assignor": "cooperative-sticky, static members matting-1, matting-2",
            "model": "committed U2-NetP (shared/matting/models/u2netp-skuforge.onnx), CPU",
        },
        # Runs whose consumer group never formed (a member left out of the group), tried again.
        "incidents": incidents,
        "machine": info,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json_file_text(result, label=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
