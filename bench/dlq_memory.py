"""Dead-letter tools' memory: peak RSS of ``skuforge dlq list`` and ``replay`` on a DLQ of large letters.

Writes LETTERS dead letters of sku.ingested, each carrying an inline original of SIZE bytes (256 kB,
the most a letter carries inline, by default), to a fresh namespace on a broker (the one named by
``SKUFORGE_KAFKA_BOOTSTRAP``, or a ``devstack.broker.LocalKafka`` started for the run), then runs
``skuforge dlq list`` and ``skuforge dlq replay`` on it, each in a child process of its own, and
reports each child's peak RSS (its VmHWM as it ends) beside that of a child that only imports the
command. With ``--before DIR`` (a checkout of
the code before a change) each command also runs from DIR on a DLQ of its own, so the two are
compared on the same broker. Prints JSON; ``--out FILE`` writes it too.

    python -m bench.dlq_memory --letters 200 [--letters 400 ...] [--before DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.events import dead_letter, numbered_original, write_dead_letters
from schemas.envelope import DLQ_INLINE_MAX_BYTES
from schemas.topics import SKU_INGESTED
from shared.argtypes import file_problem, int_between, json_file_text, path_argument, positive_int
from shared.commands import run_command

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def _write_dlq(bootstrap: str, namespace: str, letters: int, size: int) -> int:
    """``letters`` dead letters of ``namespace``'s sku.ingested, each with a different original of
    ``size`` bytes; the topics are created first. Returns the bytes written to the DLQ."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = namespace + SKU_INGESTED.name
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in (topic, topic + ".dlq")])
    finally:
        admin.close()
    dead = (dead_letter(topic, offset, numbered_original(offset, size)) for offset in range(letters))
    return write_dead_letters(bootstrap, topic + ".dlq", dead)


def _peak_rss_mb(tree: Path, argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Peak RSS (MiB) and exit status of ``skuforge`` ARGV (no ARGV: the dlq command only imported) run
    from ``tree``: the child's own VmHWM when it ends. (Not ``ru_maxrss``: a child starts with its
    parent's, and this parent has just written the DLQ.)"""
    with tempfile.NamedTemporaryFile("r", suffix=".kb") as peak:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, peak.name, *argv],
            cwd=tree,
            env=dict(env, PYTHONPATH=str(tree)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return int(peak.read()) / 1024, child.returncode


# The command in the child, then its high-water RSS in kB written to argv[1].
_CHILD = """
import sys
import skuforge_cli.dlq
from skuforge_cli.main import main
try:
    code = main(sys.argv[2:]) if sys.argv[2:] else 0
except SystemExit as stop:
    code = stop.code
with open("/proc/self/status") as status:
    peak_kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
with open(sys.argv[1], "w") as out:
    out.write(peak_kb)
sys.exit(code)
"""


def measure(bootstrap: str, tree: Path, letters: int, size: int, store_root: Path) -> dict[str, Any]:
    """One DLQ of ``letters`` written, then list and replay run on it from ``tree``."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}."
    written = _write_dlq(bootstrap, namespace, letters, size)
    env = dict(
        os.environ,
        SKUFORGE_KAFKA_BOOTSTRAP=bootstrap,
        SKUFORGE_TOPIC_NAMESPACE=namespace,
        SKUFORGE_STORE_URI=f"file://{store_root / namespace}",
    )
    topic = SKU_INGESTED.name
    imports_mb, _ = _peak_rss_mb(tree, [], env)
    list_mb, list_exit = _peak_rss_mb(tree, ["dlq", "list", topic], env)
    replay_mb, replay_exit = _peak_rss_mb(tree, ["dlq", "replay", topic], env)
    return {
        "tree": str(tree),
        "letters": letters,
        "dlq_mb": round(written / MB, 1),
        "imports_peak_rss_mb": round(imports_mb, 1),
        "list_peak_rss_mb": round(list_mb, 1),
        "list_exit": list_exit,
        "replay_peak_rss_mb": round(replay_mb, 1),
        "replay_exit": replay_exit,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure the dlq commands' peak memory and print (or write) the JSON; a refusal (a NaN figure, the
    broker away) says so in a line."""
    return run_command("python -m bench.dlq_memory", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dlq_memory", description=__doc__.split("\n")[0].replace("``", "")
    )
    parser.add_argument("--letters", type=positive_int, action="append", help="letters per DLQ (repeatable)")
    # An original is whole 8-byte numbers (under 8 bytes, empty) that a letter carries inline: a larger
    # one is no dead letter a stage writes, and went to the broker only after it had started.
    parser.add_argument(
        "--size",
        type=int_between(8, DLQ_INLINE_MAX_BYTES),
        default=DLQ_INLINE_MAX_BYTES,
        help=f"bytes of each inline original, 8 to {DLQ_INLINE_MAX_BYTES} (default)",
    )
    parser.add_argument(
        "--before", type=path_argument("folder"), help="a checkout of the code before a change, measured too"
    )
    parser.add_argument("--out", type=path_argument("file"), help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.before is not None:
        try:
            checkout = (args.before / "shared" / "dlq.py").is_file()
        except OSError as exc:  # a name too long, a folder this user may not look into: not False
            parser.error(f"--before {args.before}: cannot reach it ({exc.strerror or exc})")
        if not checkout:
            parser.error(
                f"--before {args.before}: no shared/dlq.py there; give a checkout of this repository"
            )
    # Checked before the broker starts and every DLQ is measured, not found in a traceback after them.
    if args.out is not None and (problem := file_problem(args.out, "dlq_memory.json")):
        parser.error(f"--out {args.out}: {problem}")
    trees = [ROOT] + ([args.before.resolve()] if args.before is not None else [])
    results = []
    with ExitStack() as stack:
        bootstrap = os.environ.get("SKUFORGE_KAFKA_BOOTSTRAP", "").strip()
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlq-memory-")))
        if not bootstrap:
            from devstack.broker import LocalKafka, free_ports

            port, controller_port = free_ports(2)
            broker = LocalKafka(scratch / "kafka", port=port, controller_port=controller_port, heap_mb=512)
            broker.start(timeout_s=120)
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        for letters in args.letters or [200]:
            for tree in trees:
                results.append(measure(bootstrap, tree, letters, args.size, scratch / "store"))
                print(json.dumps(results[-1]), file=sys.stderr)
    report = json_file_text(
        {"size_bytes": args.size, "results": results}, label=str(args.out or "the report")
    )
    print(report, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)  # a folder file_problem found could be made
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
