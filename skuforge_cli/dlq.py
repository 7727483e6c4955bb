"""``skuforge dlq list|replay TOPIC``: the command line of the dead-letter tools in ``shared/dlq.py``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime

from schemas.topics import DLQ_SUFFIX
from shared.argtypes import CommandParser, non_negative_int
from shared.config import Settings, load_settings
from shared.dlq import (
    REPLAY_PREFIX,
    REPLAYABLE_REASONS,
    SAMPLES_PER_REASON,
    DlqError,
    ReplayInterrupted,
    format_other_topic,
    format_replay,
    format_summary,
    format_unreadable,
    parse_since,
    read_dead_letters,
    replay,
    replayed_keys,
    replayed_markers,
    select,
    summarise,
)
from shared.errors import TransientError
from shared.signals import stopped_as_interrupt
from shared.store import ObjectStore, open_settings_store

# The characters Kafka allows in a topic name (org.apache.kafka.common.internals.Topic).
_KAFKA_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _topic_arg(text: str) -> str:
    """TOPIC, with or without .dlq: an empty name, or one no Kafka topic can have, is a usage error
    (exit 2). Before, ``dlq replay ''`` looked the topic '.dlq' up on the broker and exited 1."""
    if not text.removesuffix(DLQ_SUFFIX):
        raise argparse.ArgumentTypeError(
            "is empty; give the topic as `skuforge topics list` prints it, with or without .dlq"
        )
    if not _KAFKA_TOPIC_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kafka topic name (letters, digits, '.', '_' and '-' only)"
        )
    return text


def _since_arg(text: str) -> datetime:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """``skuforge dlq`` and its two actions."""
    parser = CommandParser(
        prog="skuforge dlq",
        description="Inspect dead letters (<topic>.dlq); replay them to their topic once the cause is fixed.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser(
        "list",
        help="dead letters by reason, with counts and samples",
        description="Read TOPIC's .dlq from the start and print, per reason, how many dead letters it holds, "
        "how many were replayed, and a few samples (event_id, sku_id, detail; control characters "
        "escaped).",
    )
    again = sub.add_parser(
        "replay",
        help="republish dead letters' original bytes to their topic, each once",
        description="Republish the selected dead letters' original bytes and key to their original topic "
        "(a key_mismatch letter's keyed by its sku_id). "
        "Each dead letter is replayed once: a marker per replayed letter (in the object store, "
        f"{REPLAY_PREFIX}/) makes a second run skip it, and one replay of a topic runs at a time (a second "
        "exits 1 naming the first). Fix the cause first (restore the object, "
        "upgrade the consumer), or the letters are dead-lettered again. Without --reason, only letters "
        "a fix outside the event can help are replayed: "
        + "; ".join(f"{reason} (once {fix})" for reason, fix in REPLAYABLE_REASONS.items())
        + ". The others "
        "(not_json, corrupt, checksum_mismatch...: the event itself is bad) are left and counted, and "
        "replayed on purpose with --reason R or --include-permanent. A letter whose original topic is "
        "not TOPIC (a mirrored or shared DLQ) is never replayed: it is named, and the exit code is 1.",
    )
    for action in (listing, again):
        action.add_argument(
            "topic",
            metavar="TOPIC",
            type=_topic_arg,
            help="the topic, or its .dlq (as `skuforge topics list` prints)",
        )
        action.add_argument(
            "--reason",
            help="only dead letters of this reason (e.g. object_missing); a reason no letter has is an error",
        )
        action.add_argument(
            "--since",
            type=_since_arg,
            help="only dead letters that failed at or after this: an ISO time (naive = UTC) or a duration "
            "back from now (90s, 30m, 2h, 7d)",
        )
        action.add_argument(
            "--any-namespace",
            action="store_true",
            help="accept a topic outside SKUFORGE_TOPIC_NAMESPACE (another environment's); without it, "
            "TOPIC is looked up in this environment's namespace first and another's is refused",
        )
    listing.add_argument(
        "--samples",
        type=non_negative_int,
        default=SAMPLES_PER_REASON,
        help=f"samples per reason, 0 or more (default {SAMPLES_PER_REASON})",
    )
    listing.add_argument("--json", action="store_true", help="print the summary as JSON")
    again.add_argument(
        "--include-permanent",
        action="store_true",
        help="also replay letters whose reason says the event itself is bad (not_json, corrupt, "
        "checksum_mismatch...), which a replay without --reason leaves",
    )
    again.add_argument("--dry-run", action="store_true", help="say what would be replayed; republish nothing")
    return parser


def main(
    argv: list[str] | None = None, *, settings: Settings | None = None, store: ObjectStore | None = None
) -> int:
    """``skuforge dlq list|replay TOPIC ...``; returns the exit code."""
    args = build_parser().parse_args(argv)
    settings = settings or load_settings()
    store = store or open_settings_store(settings)
    try:
        dead = read_dead_letters(settings, args.topic, any_namespace=args.any_namespace)
        if args.action == "list":
            letters = select(dead.letters, reason=args.reason, since=args.since)
            replayed = replayed_keys(dead.letters, replayed_markers(store, dead.dlq_topic))
            summary = summarise(dead, letters, replayed, args.samples)
            print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
            return 0
        with stopped_as_interrupt():  # a SIGTERM or SIGHUP also lets the replay mark what was delivered
            report = replay(
                settings,
                store,
                dead,
                reason=args.reason,
                since=args.since,
                include_permanent=args.include_permanent,
                dry_run=args.dry_run,
            )
        print(format_replay(dead, report, dry_run=args.dry_run))
        # Replayed what it could; these need a person.
        problems = [
            p
            for p in (format_other_topic(dead, report), format_unreadable(report, dry_run=args.dry_run))
            if p is not None
        ]
        for problem in problems:
            print(f"skuforge dlq {args.action}: {problem}", file=sys.stderr)
        return 1 if problems else 0
    except ReplayInterrupted as exc:  # Ctrl-C, SIGTERM or SIGHUP: what was delivered is marked
        print(f"skuforge dlq {args.action}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except DlqError as exc:
        print(f"skuforge dlq {args.action}: {exc}", file=sys.stderr)
        return 1
    except TransientError as exc:  # the object store (replay markers) is away
        hint = "is the store at SKUFORGE_STORE_URI reachable?"
        print(f"skuforge dlq {args.action}: {exc} ({hint})", file=sys.stderr)
        return 1
