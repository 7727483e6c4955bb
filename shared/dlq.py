"""Dead letters: list them by reason, and replay them to their original topic once each.

``skuforge dlq list TOPIC`` reads ``<TOPIC>.dlq`` from the start and prints, per reason, how many
dead letters there are, how many were replayed, and a few samples (event_id, sku_id, detail). (The
command line itself is ``skuforge_cli/dlq.py``.)

``skuforge dlq replay TOPIC [--reason R] [--since T] [--include-permanent]`` republishes the selected
dead letters' original bytes and key to their original topic, after the cause was fixed (the object is
back, the consumer was upgraded). Without ``--reason`` it replays only the letters a fix outside the
event can help (``REPLAYABLE_REASONS``: ``object_missing``, ``handler_error``); a letter whose reason
says the event itself is bad (``not_json``, ``corrupt``, ``checksum_mismatch``...) would only be
dead-lettered again, so it is left and counted, and replayed on purpose with ``--reason R`` or
``--include-permanent``. A ``key_mismatch`` letter (an event keyed by another SKU) is sent keyed by its
envelope's ``sku_id`` (``replay_key``), not by the key it came with. Each dead letter is replayed once:
as the republished records are acknowledged (idempotent producer, acks=all), a replay marker per dead
letter is written, in batches, to the object store
(``dlq-replays/<dlq topic>/<partition>-<offset>-<sha>.json``), and a later replay skips every dead
letter that has a marker; one replay of a DLQ runs at a time (``_ReplayLock``). Markers, not
consumer-group offsets, because ``--reason`` and ``--since`` select letters out of order: an offset
would also pass over the letters left behind.
A letter that fails again after its replay is a new dead letter, and can be replayed in turn.

A replayed record carries the header ``skuforge-replay-stage`` naming the stage that dead-lettered it;
the runtime's other stages on that topic commit it without handling it (docs/delivery.md). TOPIC is
this environment's (``SKUFORGE_TOPIC_NAMESPACE``) first; another environment's needs ``any_namespace``.
A letter goes only to TOPIC: one whose own ``original_topic`` is another (a mirrored or shared DLQ, a
letter written elsewhere) is never sent, to TOPIC or to its own topic; it is named, and the command
exits 1, until it is left out with ``--since``/``--reason`` or replayed from its own environment.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import TopicPartition
from pydantic import ValidationError

from schemas.envelope import DeadLetter, utc_now
from schemas.topics import ALL_TOPICS, DLQ_SUFFIX, PASSTHROUGH_OUT
from shared.bus import (
    READ_EXTRA,
    RECORD_REFUSALS,
    close_stopped_producer,
    kafka_connection,
    listed_topics,
    make_producer,
    producer_stopped_by_a_record,
)
from shared.config import Settings
from shared.errors import BadInput, ObjectMissing, TransientError
from shared.observability import escape_control_characters
from shared.signals import signal_number, stopped_how, stops_wait_for_clean_up
from shared.store import MAX_SEGMENT_BYTES, ObjectStore

log = logging.getLogger("skuforge.dlq")

REPLAY_PREFIX = "dlq-replays"
# The runtime's reason for an event whose Kafka key is not its envelope's sku_id (shared/runtime.py): a
# replay sends it keyed by the letter's sku_id (``replay_key``), so it lands on its SKU's partition.
KEY_MISMATCH = "key_mismatch"
# Kafka header on a replayed record: the name of the stage (DeadLetter.stage, the Stage's name) that
# dead-lettered it, the only one that handles it again (shared/runtime.py; docs/delivery.md).
REPLAY_STAGE_HEADER = "skuforge-replay-stage"
# Kafka header on a replayed record: the replay marker key of its dead letter. A replay that takes over
# the lock of one that was killed reads the records that one sent (from the offsets its lock names) and
# marks those letters, which it would otherwise send again.
REPLAY_OF_HEADER = "skuforge-replay-of"
SAMPLES_PER_REASON = 3
# The characters of a letter's detail a sample shows, and all of it that a listed letter keeps.
SAMPLE_DETAIL_CHARS = 300
READ_TIMEOUT_S = 30.0
# A replay marks what Kafka acknowledged as it goes, in batches: once this many records wait for their
# markers, or the first of them was seen this long ago (checked before each original is read). A replay
# killed (SIGKILL, OOM, a lost machine) sends again at most the records acknowledged since the last
# batch, not all it had sent.
MARK_EVERY_RECORDS = 100
MARK_EVERY_S = 2.0
# One replay of a DLQ at a time: each takes ``dlq-replay-locks/<dlq topic>.json`` before it reads the
# markers, and writes a heartbeat beside it every LOCK_REFRESH_S while it runs. Two at once each read
# the markers before the other wrote any, and sent every letter twice. A lock whose heartbeat is
# LOCK_STALE_S old (its replay killed, on this machine or another), or one of a process that is gone
# from this machine, is taken over.
REPLAY_LOCK_PREFIX = "dlq-replay-locks"
LOCK_REFRESH_S = 10.0
LOCK_STALE_S = 60.0
# A replay whose heartbeat the store refused this long stops itself: a margin before its lock looks stale
# (another machine's clock reads the heartbeat's age), and another replay takes it over.
LOCK_GIVE_UP_S = LOCK_STALE_S - 2 * LOCK_REFRESH_S
# The sender reads the lock before a send once it last found it its own this long ago (``_ReplayLock.check``).
LOCK_CHECK_S = 2.0
# Between the tries to take the lock. A take refused, then no object there to read, is a release under
# way (S3 answers 409 to a conditional write while a conditional delete of the key runs): the three tries,
# one right after another, all fell inside one, and its user was told to remove a folder that was not there.
LOCK_RETRY_S = 0.2
# [0-9], not \d: \d matches any script's digits and float() reads them ('٣d' was 3 days).
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
# A replay's run, as it writes it in its lock (uuid4 hex): what its heartbeat's key is made of. A lock
# is whoever wrote it; ``isalnum`` took any script's letters at any length, and a run of 90 CJK letters
# (270 bytes) made a key past the store's 255-byte segments, which raised out of a takeover.
_RUN = re.compile("[0-9a-f]{32}")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# The flow's topic names without a namespace: such a name is never inside a non-empty namespace, even
# one it happens to start with (namespace "sku", topic "sku.ingested.v1").
_PLAIN_FLOW_TOPICS = frozenset(topic.name for topic in (*ALL_TOPICS, PASSTHROUGH_OUT))
# The reasons whose cause lies outside the event, with the fix that lets the same bytes through. Every
# other reason says the event itself is bad (not JSON, a corrupt image, bytes that are not what its sha256
# says, an older event superseded by a re-ingest): its replay is dead-lettered again, so a replay without
# --reason leaves it (shared/errors.py: BadInput is the input's fault; a missing object is the one the
# world can put back, and handler_error is a stage fault or an outage that outlasted the retries).
# key_mismatch is the record's key, not its event: the replay itself sends it keyed by its sku_id.
REPLAYABLE_REASONS: dict[str, str] = {
    "object_missing": "the object is back in the store",
    "output_refused": "the output topic takes the record: its max.message.bytes was raised",
    "handler_error": "the stage is fixed, or the outage that outlasted its retries is over",
    "too_many_photos": "SKUFORGE_MAX_PHOTOS_PER_SKU was raised",
    "unknown_adapter": "the adapter the event names is registered",
    "adapter_checksum_mismatch": "the adapter whose weights were damaged in the registry is registered again",
    "no_adapter_registry": "the generator was given its adapter registry",
    "manifest_unreadable": "the manifest part it names was restored",
    "key_too_long": "a shorter prefix (SKUFORGE_STORE_URI's, SKUFORGE_TRAINSTORE_PREFIX) leaves keys room",
    KEY_MISMATCH: "it is sent keyed by its envelope's sku_id, not by the other SKU's key it came with",
}


class DlqError(Exception):
    """A dead-letter command cannot go on: no such topic, broker unreachable, a send failed."""


class OriginalUnreadable(DlqError):
    """One letter's original bytes are gone from the store, changed, or not base64."""


class ReplayInterrupted(DlqError):
    """Ctrl-C (or SIGTERM, SIGHUP: ``shared.signals``) stopped a replay; the records acknowledged by then
    are marked, the others are not. ``signum``: the signal, for the exit status (128 + it)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """One dead letter as a list or a replay keeps it: where it lies in its ``.dlq`` topic, and the fields
    of it that ``select``, ``summarise`` and ``replay`` read, not the ``DeadLetter`` itself.

    A DLQ of a busy week holds hundreds of thousands of letters, and each was kept whole: its inline
    original first (up to ~350 kB), then the pydantic model without it, still ~2 kB a letter (~2 GB for
    a million); this is ~0.5 kB and the detail. A replay reads each letter it sends again, whole
    (``_letters_again``), one at a time. ``detail`` is cut to what a sample shows
    (``SAMPLE_DETAIL_CHARS``). The names that repeat from letter to letter (reason, stage, topic) are
    interned, one string for them all.
    """

    dlq_topic: str
    partition: int
    offset: int
    # sha256 of the dead-letter record's bytes, so a recreated topic's offset 0 is not "replayed"
    letter_sha256: bytes
    # ``_origin`` of the whole letter, taken while its bytes were at hand: letters of one digest are of
    # one record and stage.
    origin: bytes
    reason: str
    stage: str
    original_topic: str
    original_offset: int
    event_id: str | None
    sku_id: str | None
    failed_at: datetime
    detail: str

    @classmethod
    def of(
        cls, dlq_topic: str, partition: int, offset: int, value: bytes, letter: DeadLetter
    ) -> StoredLetter:
        """``letter``, read from ``value`` at ``partition``@``offset`` of ``dlq_topic``, as it is kept."""
        return cls(
            dlq_topic,
            partition,
            offset,
            hashlib.sha256(value).digest(),
            _origin(letter),
            sys.intern(letter.reason),
            sys.intern(letter.stage),
            sys.intern(letter.original_topic),
            letter.original_offset,
            letter.event_id,
            letter.sku_id,
            letter.failed_at,
            letter.detail[:SAMPLE_DETAIL_CHARS],
        )

    @property
    def marker_key(self) -> str:
        """Object-store key of this letter's replay marker."""
        sha = self.letter_sha256.hex()[:16]
        return f"{REPLAY_PREFIX}/{self.dlq_topic}/{self.partition}-{self.offset}-{sha}.json"


@dataclass(frozen=True)
class DeadLetterTopic:
    """A ``.dlq`` topic's readable letters, plus the count of records that were not dead letters."""

    original_topic: str
    dlq_topic: str
    letters: list[StoredLetter]
    unreadable: int


@dataclass(frozen=True)
class ReplayReport:
    """What one replay run did."""

    republished: list[StoredLetter]
    already_replayed: int
    not_selected: int
    # Selected, not replayed yet, and left: a permanent reason, asked for by neither --reason nor
    # --include-permanent.
    permanent: list[StoredLetter]
    # Selected, not replayed yet, and never sent: their original_topic is not the topic being replayed to.
    other_topic: list[StoredLetter]
    # Selected and never sent: the original bytes are gone, changed or not base64 (with the reason).
    # Before, the first such letter stopped the whole replay, every other letter with it.
    unreadable: list[tuple[StoredLetter, str]] = field(default_factory=list)


# -- reading ----------------------------------------------------------------------------------


def resolve_topics(settings: Settings, topic: str, *, any_namespace: bool = False) -> tuple[str, str]:
    """``(original topic, dlq topic)`` for ``topic`` given either way; ``DlqError`` when there is no DLQ.

    The name is the Kafka name (``skuforge topics list``) or the name without the environment's
    namespace (``SKUFORGE_TOPIC_NAMESPACE``). This environment's namespaced name is tried first, so a
    ``staging.`` environment never reads (or replays) another environment's un-namespaced DLQ of the
    same name. A topic outside the namespace is refused unless ``any_namespace`` is asked for.
    """
    base = topic.removesuffix(DLQ_SUFFIX)
    existing = _list_topics(settings)
    namespace = settings.topic_namespace
    # The namespaced name first, even when the name already starts with the namespace: with a
    # namespace "sku", "sku.ingested.v1" is this environment's "skusku.ingested.v1".
    candidates = [namespace + base]
    if namespace and base.startswith(namespace) and base not in _PLAIN_FLOW_TOPICS:
        candidates.append(base)  # given as `skuforge topics list` prints it
    # With no namespace here, "staging.sku.ingested.v1" is another environment's topic (a flow topic
    # under a prefix): it was used without --any-namespace, its markers written to this store.
    foreign = (
        not namespace
        and base not in _PLAIN_FLOW_TOPICS
        and any(base.endswith(flow) for flow in _PLAIN_FLOW_TOPICS)
    )
    if foreign and not any_namespace and base + DLQ_SUFFIX in existing:
        raise DlqError(
            f"{base + DLQ_SUFFIX!r} is another environment's topic (a flow topic under a namespace), and "
            "this one has none (SKUFORGE_TOPIC_NAMESPACE is empty); pass --any-namespace to use it on "
            "purpose, or run with that environment's settings"
        )
    for name in candidates:
        if name + DLQ_SUFFIX in existing:
            return name, name + DLQ_SUFFIX
    if namespace and base + DLQ_SUFFIX in existing:
        if any_namespace:
            return base, base + DLQ_SUFFIX
        raise DlqError(
            f"{base + DLQ_SUFFIX!r} is outside this environment's namespace {namespace!r} "
            f"(SKUFORGE_TOPIC_NAMESPACE), and {namespace + base + DLQ_SUFFIX!r} does not exist; "
            "pass --any-namespace to use another environment's topic on purpose"
        )
    known = sorted(name for name in existing if name.endswith(DLQ_SUFFIX))
    tried = f" (nor {candidates[0] + DLQ_SUFFIX!r})" if candidates[0] != base else ""
    raise DlqError(
        f"topic {base + DLQ_SUFFIX!r} does not exist{tried} on {settings.kafka_bootstrap}; "
        f"dead-letter topics there: {', '.join(known) or '(none)'} "
        "(give the topic as `skuforge topics list` prints it, with or without .dlq)"
    )


def read_dead_letters(
    settings: Settings, topic: str, *, timeout_s: float = READ_TIMEOUT_S, any_namespace: bool = False
) -> DeadLetterTopic:
    """Every record of ``topic``'s DLQ from its start to its end when called, read without a group.

    Each letter is kept without its inline original (``StoredLetter``), so the memory this takes grows
    with the number of letters, not with their bytes. ``topic`` is resolved by ``resolve_topics``
    (``any_namespace``: accept another environment's)."""
    original, dlq = resolve_topics(settings, topic, any_namespace=any_namespace)
    consumer = _dlq_consumer(settings)
    letters: list[StoredLetter] = []
    unreadable = 0
    try:
        partitions = [TopicPartition(dlq, p) for p in sorted(consumer.partitions_for_topic(dlq) or ())]
        consumer.assign(partitions)
        end = consumer.end_offsets(partitions)
        consumer.seek_to_beginning(*partitions)
        for record in _records_to_end(consumer, end, timeout_s=timeout_s, what=f"{dlq} to its end"):
            try:
                letter = DeadLetter.model_validate_json(record.value or b"", extra=READ_EXTRA)
            except ValidationError:
                unreadable += 1
                continue
            stored = StoredLetter.of(dlq, record.partition, record.offset, record.value or b"", letter)
            letters.append(stored)
    except KafkaError as exc:
        raise DlqError(f"could not read {dlq}: {exc}") from exc
    finally:
        consumer.close()
    return DeadLetterTopic(original, dlq, letters, unreadable)


def _records_to_end(
    consumer: KafkaConsumer, end: dict[TopicPartition, int], *, timeout_s: float, what: str
) -> Iterator[ConsumerRecord]:
    """The records of ``end``'s partitions (assigned to ``consumer``) from their positions up to ``end``,
    their end offsets when the read began.

    A deadline for progress, not for the whole read: a DLQ of thousands of letters (originals of up to
    ~350 kB inline) takes longer than one timeout to read, and could never be listed or replayed. It
    gives up (``DlqError``: could not read ``what``) when nothing has come for ``timeout_s``."""
    remaining = {tp for tp in end if consumer.position(tp) < end[tp]}
    if at_end := set(end) - remaining:
        # Not fetched either, as those that reach their end below: before, a partition at its end from
        # the start (an empty one) was fetched for as long as the read took, what came to it dropped.
        consumer.pause(*at_end)
    deadline = time.monotonic() + timeout_s
    while remaining:
        if time.monotonic() > deadline:
            raise DlqError(f"could not read {what}: nothing came for {timeout_s:.0f}s")
        batch = consumer.poll(timeout_ms=200)
        if batch:
            deadline = time.monotonic() + timeout_s
        for tp, records in batch.items():
            yield from (record for record in records if record.offset < end[tp])
        done = {tp for tp in remaining if consumer.position(tp) >= end[tp]}
        if done:
            consumer.pause(*done)  # what comes after its end is not wanted: not fetched either
            remaining -= done


def _dlq_consumer(settings: Settings) -> KafkaConsumer:
    return KafkaConsumer(
        **kafka_connection(settings),
        client_id="skuforge-dlq",
        group_id=None,
        enable_auto_commit=False,
        # Retention deleting the oldest letters mid-read: kafka-python's default ("latest") jumped to
        # the end, and the read ended early without a word.
        auto_offset_reset="earliest",
    )


def _letters_again(
    settings: Settings,
    wanted: Sequence[StoredLetter],
    *,
    timeout_s: float = READ_TIMEOUT_S,
) -> Generator[tuple[StoredLetter, DeadLetter | str]]:
    """``wanted``'s letters read again from their DLQ, whole (inline originals included), one record
    at a time, each partition in offset order; for a letter that cannot be, why (a ``str``).

    The second pass of a replay: ``read_dead_letters`` kept the letters without their bytes, and this
    holds what one fetch brings (``max_partition_fetch_bytes`` per partition), never the topic. A
    letter whose record is gone (retention deleted it since) or holds other bytes (the topic was
    deleted and created again) is answered with why, not with another record's bytes."""
    if not wanted:
        return
    dlq = wanted[0].dlq_topic
    left: dict[int, dict[int, StoredLetter]] = {}
    for stored in wanted:
        left.setdefault(stored.partition, {})[stored.offset] = stored
    consumer = _dlq_consumer(settings)
    try:
        partitions = {partition: TopicPartition(dlq, partition) for partition in sorted(left)}
        consumer.assign(list(partitions.values()))
        for partition, tp in partitions.items():
            consumer.seek(tp, min(left[partition]))
        # Read up to the last letter wanted of each partition, no further.
        last = {tp: max(left[partition]) + 1 for partition, tp in partitions.items()}
        for record in _records_to_end(consumer, last, timeout_s=timeout_s, what=f"{dlq} again"):
            if record.offset in left[record.partition]:
                stored = left[record.partition].pop(record.offset)
                yield stored, _whole_letter(stored, record.value or b"")
        for partition, offsets in left.items():
            # Those that did not come: deleted since (retention, a new topic).
            for offset, stored in sorted(offsets.items()):
                yield stored, f"its dead letter {partition}@{offset} is no longer in {dlq}"
    except KafkaError as exc:
        raise DlqError(f"could not read {dlq} again: {exc}") from exc
    finally:
        consumer.close()


def _whole_letter(stored: StoredLetter, value: bytes) -> DeadLetter | str:
    """The letter ``stored`` lists, read whole from its record's ``value``; why not, when it is not."""
    where = f"{stored.partition}@{stored.offset} of {stored.dlq_topic}"
    if hashlib.sha256(value).digest() != stored.letter_sha256:
        return f"the dead letter at {where} changed since it was listed (the topic was created again?)"
    return DeadLetter.model_validate_json(value, extra=READ_EXTRA)


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO time (naive = UTC) or a duration back from now: ``90s``, ``30m``, ``2h``, ``7d``."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        try:
            return (now or utc_now()) - timedelta(**{_DURATION_UNITS[unit]: amount})
        except OverflowError:  # 99999999d: before the year 1
            raise ValueError(f"{text!r} reaches back before the year 1; give a shorter duration") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO time (2026-12-01T14:00:00Z) nor a duration (90s, 30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def select(
    letters: Sequence[StoredLetter], *, reason: str | None, since: datetime | None
) -> list[StoredLetter]:
    """The letters of ``reason`` (all when None) that failed at or after ``since`` (all when None).

    ``DlqError`` when no letter at all has ``reason``: a mistyped reason (``object-missing`` for
    ``object_missing``) would otherwise select nothing and a replay would "succeed" with 0 letters.
    """
    if reason is not None:
        present = Counter(stored.reason for stored in letters)
        if reason not in present:
            # A reason is the letter writer's text: escaped, as in format_summary.
            listed = escape_control_characters(
                ", ".join(f"{name} ({count})" for name, count in sorted(present.items()))
            )
            raise DlqError(
                f"no dead letter has reason {reason!r}; reasons present: {listed or '(no dead letters)'}"
            )
    return [
        stored
        for stored in letters
        if (reason is None or stored.reason == reason) and (since is None or stored.failed_at >= since)
    ]


def is_permanent(reason: str) -> bool:
    """Whether ``reason`` says the event itself is bad, so a replay without ``--reason`` leaves it."""
    return reason not in REPLAYABLE_REASONS


def replayed_markers(store: ObjectStore, dlq_topic: str) -> set[str]:
    """Keys of the replay markers written for ``dlq_topic``."""
    return set(store.list_addressable(f"{REPLAY_PREFIX}/{dlq_topic}/"))


def replayed_keys(letters: Sequence[StoredLetter], markers: set[str]) -> set[str]:
    """The marker keys of ``letters`` that count as replayed: those of ``markers``, and those of the
    other letters of a marked letter's record and stage (``_origin``: dead-lettered twice). Before, a
    run that picked one of them (``--since``, ``--reason``) sent the record, and a later run sent it again."""
    origins = {stored.origin for stored in letters if stored.marker_key in markers}
    return {
        stored.marker_key for stored in letters if stored.marker_key in markers or stored.origin in origins
    }


# -- list -------------------------------------------------------------------------------------


def summarise(
    dead: DeadLetterTopic,
    letters: Sequence[StoredLetter],
    replayed: set[str],
    samples: int = SAMPLES_PER_REASON,
) -> dict[str, Any]:
    """Per reason: count, how many were replayed, whether it is permanent (``is_permanent``), and the
    first ``samples`` letters."""
    reasons: dict[str, dict[str, Any]] = {}
    for stored in letters:
        entry = reasons.setdefault(
            stored.reason,
            {"count": 0, "replayed": 0, "permanent": is_permanent(stored.reason), "samples": []},
        )
        entry["count"] += 1
        entry["replayed"] += stored.marker_key in replayed
        if len(entry["samples"]) < samples:
            entry["samples"].append(_sample(stored))
    return {
        "topic": dead.original_topic,
        "dlq_topic": dead.dlq_topic,
        "dead_letters": len(letters),
        "replayed": sum(entry["replayed"] for entry in reasons.values()),
        "unreadable_records": dead.unreadable,
        "reasons": dict(sorted(reasons.items(), key=lambda item: (-item[1]["count"], item[0]))),
    }


def _sample(stored: StoredLetter) -> dict[str, Any]:
    return {
        "at": f"{stored.partition}@{stored.offset}",
        "event_id": stored.event_id,
        "sku_id": stored.sku_id,
        "stage": stored.stage,
        "failed_at": stored.failed_at.isoformat(),
        "detail": stored.detail[:SAMPLE_DETAIL_CHARS],
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary for a terminal. A letter's fields are another writer's text: their control characters
    are escaped (``\\x1b``), so no escape sequence or forged line reaches the operator's terminal."""
    lines = [
        f"{summary['dlq_topic']}: {summary['dead_letters']} dead letters of {summary['topic']} "
        f"({summary['replayed']} replayed)"
    ]
    if summary["unreadable_records"]:
        lines.append(f"  and {summary['unreadable_records']} records that are not dead letters (skipped)")
    for reason, entry in summary["reasons"].items():
        permanent = "; permanent: a replay without --reason leaves it" if entry["permanent"] else ""
        line = f"  {reason}: {entry['count']} ({entry['replayed']} replayed{permanent})"
        lines.append(escape_control_characters(line))
        for sample in entry["samples"]:
            lines.append(
                escape_control_characters(
                    f"    {sample['at']}  sku {sample['sku_id'] or '-'}  event {sample['event_id'] or '-'}  "
                    f"{sample['failed_at']}  {sample['stage']}: {sample['detail']}"
                )
            )
    return "\n".join(lines)


# -- replay -----------------------------------------------------------------------------------


def replay(
    settings: Settings,
    store: ObjectStore,
    dead: DeadLetterTopic,
    *,
    reason: str | None = None,
    since: datetime | None = None,
    include_permanent: bool = False,
    dry_run: bool = False,
) -> ReplayReport:
    """Republish the selected letters not yet replayed, and write their markers as Kafka acknowledges
    them. ``dead`` holds the letters without their original bytes; each letter to send is read again
    from the DLQ (its original from the store, when it is kept there), one at a time, and sent before
    the next is read. So the memory grows with the number of letters (~0.5 kB each, and the detail a
    sample shows; ``StoredLetter``), not their bytes. A
    letter deleted from the DLQ since it was listed (retention) is named in ``unreadable``.

    Without ``reason`` (or ``include_permanent``), letters of a permanent reason (``is_permanent``) are
    left: their replay would only be dead-lettered again. A letter whose ``original_topic`` is not
    ``dead.original_topic`` is never sent: it came from another topic than the one this DLQ belongs to
    (a mirrored or shared DLQ), and sending it to either would cross environments. Both are reported.

    Letters of one original record and stage (dead-lettered twice) are sent once, by one run or by runs
    that picked them apart (``replayed_keys``). Each acknowledged record's letters are marked, and only
    those: a failed send leaves its letters unmarked for the next run, which sends nothing twice. The
    markers go out in batches while the replay sends (``MARK_EVERY_RECORDS``, ``MARK_EVERY_S``), and
    the rest once the producer is closed. A record the topic refuses for good stops the idempotent
    producer, failing every send after it: those are sent again one at a time (``alone``), so only the
    refused records stay unsent. Only one replay of a DLQ runs at a time (``_ReplayLock``);
    a second is refused with ``DlqError`` naming the first. A crash (SIGKILL) between an
    acknowledgement and its batch leaves a stale lock: the next run takes it over and first marks the
    letters whose records (``REPLAY_OF_HEADER``) the dead run had delivered
    (``_mark_what_a_killed_replay_sent``). A dry run takes no lock.
    """
    if dry_run:
        return _replay(settings, store, dead, reason, since, include_permanent, None)
    lock = _ReplayLock(store, dead.dlq_topic, _end_offsets(settings, dead.original_topic))
    killed = lock.acquire()
    try:
        if killed is not None:
            _mark_what_a_killed_replay_sent(settings, store, dead, killed)
        return _replay(settings, store, dead, reason, since, include_permanent, lock)
    finally:
        lock.release()


def _replay(
    settings: Settings,
    store: ObjectStore,
    dead: DeadLetterTopic,
    reason: str | None,
    since: datetime | None,
    include_permanent: bool,
    lock: _ReplayLock | None,
    *,
    alone: bool = False,
    earlier: int = 0,
) -> ReplayReport:
    """``replay``, under ``lock`` (None: a dry run, which sends nothing). ``alone``: each record is sent
    and flushed before the next, and a producer stopped for good by a record's refusal is replaced; the
    second pass of a run whose records a refusal failed, after ``earlier`` records acknowledged."""
    dry_run = lock is None
    chosen = select(dead.letters, reason=reason, since=since)
    done = replayed_keys(dead.letters, replayed_markers(store, dead.dlq_topic))
    not_done = [stored for stored in chosen if stored.marker_key not in done]
    leave_permanent = reason is None and not include_permanent
    permanent = [s for s in not_done if leave_permanent and is_permanent(s.reason)]
    wanted = [s for s in not_done if not (leave_permanent and is_permanent(s.reason))]
    pending = [s for s in wanted if s.original_topic == dead.original_topic]
    other_topic = [s for s in wanted if s.original_topic != dead.original_topic]
    report = ReplayReport(
        pending, len(chosen) - len(not_done), len(dead.letters) - len(chosen), permanent, other_topic
    )
    if not pending:
        return report
    # One record per original and stage: a record dead-lettered twice (a batch rewound after its letter
    # was sent, a crash before the commit) has two letters, and sending both had the stage handle it
    # twice. Every letter of the group is marked with the one copy.
    groups: dict[bytes, list[StoredLetter]] = {}
    for stored in pending:
        groups.setdefault(stored.origin, []).append(stored)
    if dry_run:
        # A dry run reads the originals too (one at a time): it said "would replay 2" of which one
        # could not be sent.
        sendable = 0
        with contextlib.closing(_originals(settings, store, groups)) as originals:
            for members, original in originals:
                if isinstance(original, str):
                    report.unreadable.extend((member, original) for member in members)
                else:
                    sendable += 1
        if sendable:
            # As the replay checks it: a dry run said "would replay 2" to a topic deleted since, exit 0,
            # and the replay it vouched for failed.
            _check_original_topic(settings, dead)
        return _without_unreadable(report)
    records = len(groups)  # to send; less those whose original cannot be read (``unsendable``)
    producer: KafkaProducer | None = None
    # What the sends hold is the batch not marked yet (``_Marking``): a run that kept every future to
    # count them at its end held them all (20000 records: peak RSS 114 MB, now 108; bench.dlq_memory).
    marking = _Marking(store, lock)
    refused: set[str] = set()  # why send() refused a record outright
    unsendable = 0  # records whose original cannot be read
    failure: KafkaError | DlqError | None = None
    interrupted: int | None = None  # the signal that stopped the replay
    originals = _originals(settings, store, groups)
    # Set before the ``try``, held from its failure paths' and ``finally``'s first statement until the
    # markers are written: a stop waits (``stops_wait_for_clean_up``).
    with stops_wait_for_clean_up() as stopping:
        try:
            # Each original is sent before the next is read: one of up to 1 MB (from dlq-originals/,
            # or its letter read again from the DLQ) at a time, and the producer's bounded buffer.
            # Before, every letter was held with its inline original, and a large DLQ was held in
            # memory whole.
            for members, original in originals:
                marking.mark_due()
                if isinstance(original, str):
                    report.unreadable.extend((member, original) for member in members)
                    unsendable += 1
                    continue
                key, value = original
                if producer is None:  # the first original that can be sent
                    _check_original_topic(settings, dead)
                    producer = make_producer(settings, client_id="skuforge-dlq-replay")
                if lock is not None:
                    # Right before the send: another replay may have taken this one's lock over.
                    lock.check()
                try:
                    headers = [
                        *replay_headers(members[0].stage),
                        (REPLAY_OF_HEADER, members[0].marker_key.encode()),
                    ]
                    future = producer.send(dead.original_topic, key=key, value=value, headers=headers)
                except MessageSizeTooLargeError as exc:
                    # This record only (over the producer's request limit: an original of a topic
                    # whose max.message.bytes was raised): before, it stopped the replay, and no letter
                    # after it was ever sent, at every run. It stays unmarked, and is named below.
                    refused.add(str(exc))
                    continue
                marking.unmarked.append((members, future))
                if alone and _refused_alone(settings, producer, future):
                    producer = None  # the next original opens a new one
            if producer is not None:
                producer.flush(timeout=settings.flush_timeout_s)
        except KafkaError as exc:
            stopping.failing = True  # first, before any call, here and below: a stop from here on waits
            failure = exc
        except DlqError as exc:  # the store went away (an original read, a batch of markers), the topic check
            stopping.failing = True
            if producer is None:
                raise  # nothing was sent
            failure = exc
        except Exception as exc:  # one it does not expect (a bug, a store's error it does not map)
            stopping.failing = True
            if producer is None:
                raise
            # Said after the markers, as a DlqError: before, it went past them, and the next replay sent
            # again every record this one had delivered.
            failure = DlqError(f"{type(exc).__name__}: {exc}")
            failure.__cause__ = exc
            # The command says it in one line; the traceback goes to the log, where a bug can be found.
            log.error("replay stopped by an error it does not expect", exc_info=exc)
        except KeyboardInterrupt as exc:
            stopping.failing = True  # set already by the stop's handler, unless it came off our handler
            # Ctrl-C (or SIGTERM, SIGHUP) while the sends were on their way: close() below still
            # delivers them, so they are marked before the command stops. Before, the interrupt skipped
            # the markers, and the next replay republished every record this one had delivered.
            interrupted = signal_number(exc)
        finally:
            # Closed before the futures are read: close() flushes, and what it delivers is marked
            # too. Before, a failed run said "nothing marked" while close() then delivered the records
            # sent before the failure, and the next run republished them. From here a stop waits until
            # the markers are written (``stopping``): before, a (second) Ctrl-C or a SIGTERM here
            # ended the command with the records delivered and (some) unmarked, and the next run
            # republished them; so did one between the closing and the markers, held apart then. The
            # reader of the letters is closed while they wait too: its consumer closes as Python
            # finalises its generator, where a stop was lost in an "Exception ignored" traceback. Held
            # from this first statement, no call: held from a call (entering ``held_signals()``), a
            # second stop whose handler ran before the hold, or in the ``except`` taking in the first,
            # went past the markers, and the next replay republished what this one had delivered.
            stopping.failing = True
            originals.close()
            try:
                if producer is not None:
                    producer.close(timeout=settings.flush_timeout_s)
            except KafkaError as exc:
                failure = failure or exc
                if producer is not None:
                    # close() flushes first, and raises before it stops the sender, which goes on with the
                    # batch it split to find a refused record ("Future not done"): closed again, it waits
                    # for that, so that ``producer_stopped_by_a_record`` below sees how it ended.
                    with contextlib.suppress(KafkaError):
                        producer.close(timeout=SECOND_CLOSE_S)
            # A record refused for good stops the idempotent producer, and every send after it fails too;
            # seen once closed (its flush raised "Future not done" while it split the refused batch).
            stopped_by_refusal = producer is not None and producer_stopped_by_a_record(producer)
        records -= unsendable  # to send, as far as this run got to know
        sent = marking.acknowledged()
        try:
            marking.mark_acknowledged()
        except Exception as exc:  # any store error (one it does not map too): said, no traceback
            why = str(exc) if isinstance(exc, TransientError | BadInput) else f"{type(exc).__name__}: {exc}"
            raise DlqError(
                f"republished {sent} dead letters to {dead.original_topic}, but could not write their "
                f"replay markers ({why}); a later replay would republish those without a marker again"
            ) from exc
        finally:
            # Taken in one step, no call, so none is lost: those held so far are said below (a stop that
            # comes after still stops the command, as the block ends).
            held, stopping.held = stopping.held, []
    if interrupted is None and held:
        interrupted = held[0]
    if (
        interrupted is None
        and (failure is None or isinstance(failure, KafkaError))  # the flush fails: "Future not done"
        and stopped_by_refusal
        and not alone
    ):
        # The records a refused one stopped the producer for: each sent again alone, so only the refused
        # stay unsent. Before, they failed with it, at every run, while it came before them.
        again = _replay(
            settings, store, dead, reason, since, include_permanent, lock, alone=True, earlier=earlier + sent
        )
        return _without_unreadable(replace(report, unreadable=again.unreadable))
    sent += earlier
    records += earlier
    if interrupted is not None:
        raise ReplayInterrupted(
            f"{stopped_how(interrupted)}: {sent} of {records} records were acknowledged and are "
            "marked; a later replay sends only the others",
            interrupted,
        )
    if isinstance(failure, DlqError):
        raise DlqError(
            f"replay stopped: {failure}; the {sent} records acknowledged before are marked, and a later "
            "replay sends only the others"
        ) from failure
    if sent < records:
        errors = refused | marking.errors
        # The records' own errors first: a batch the broker refused one record of is split by the
        # producer, and its flush then raises "Future not done", which named no cause.
        why = "; ".join(sorted(errors)) or failure or "not acknowledged"
        raise DlqError(
            f"replay failed: {records - sent} of {records} records were not acknowledged ({why}); "
            f"the {sent} acknowledged are marked, and a later replay sends only the others"
        )
    return _without_unreadable(report)


def _originals(
    settings: Settings, store: ObjectStore, groups: dict[bytes, list[StoredLetter]]
) -> Generator[tuple[list[StoredLetter], tuple[bytes | None, bytes] | str]]:
    """Each group's original record (key, value), read from its first letter, one at a time (the key it
    is replayed with: ``replay_key``); why not (a ``str``), for one whose letter or original cannot be
    read. ``DlqError`` when the DLQ or the store cannot be read at all. Each group is taken out of
    ``groups`` as it is handed out: the replay holds a group only until its record's batch is marked."""
    for stored, whole in _letters_again(settings, [members[0] for members in groups.values()]):
        members = groups.pop(stored.origin)
        if isinstance(whole, str):
            original: tuple[bytes | None, bytes] | str = (
                f"cannot replay {stored.original_topic}@{stored.original_offset}: {whole}"
            )
        else:
            try:
                key, value = original_record(whole, store)
                original = (replay_key(whole, key), value)
            except OriginalUnreadable as exc:
                original = str(exc)
        yield members, original


# How long a replay's producer whose close() raised is given to stop, closed again.
SECOND_CLOSE_S = 5.0


def _refused_alone(settings: Settings, producer: KafkaProducer, future: Any) -> bool:
    """Whether the record of ``future``, just sent alone, was refused for good; ``producer`` is then closed
    (stopped for good, it would fail every later send). A failure of another kind raises: the broker
    away, an ACL refusing every record alike."""
    try:
        producer.flush(timeout=settings.flush_timeout_s)
    except KafkaError:
        if not (future.is_done and future.failed()):
            raise
    if not (future.is_done and future.failed()):
        return False
    if not producer_stopped_by_a_record(producer):
        if isinstance(future.exception, RECORD_REFUSALS):
            return False  # refused, and the producer goes on: it stays unmarked, named below
        raise future.exception
    close_stopped_producer(producer, "skuforge dlq replay", future.exception, quiet=True)
    return True


def _check_original_topic(settings: Settings, dead: DeadLetterTopic) -> None:
    """``DlqError`` unless ``dead``'s original topic exists (the producer would wait for its metadata)."""
    if dead.original_topic not in _list_topics(settings):
        raise DlqError(f"cannot replay: original topic {dead.original_topic} does not exist; create it first")


def _without_unreadable(report: ReplayReport) -> ReplayReport:
    """``report`` whose ``republished`` leaves out the letters whose original could not be read."""
    if not report.unreadable:
        return report
    left_out = {id(stored) for stored, _ in report.unreadable}
    return replace(report, republished=[s for s in report.republished if id(s) not in left_out])


def replay_key(letter: DeadLetter, key: bytes | None) -> bytes | None:
    """The Kafka key ``letter``'s original record is replayed with: its own ``key``, but a
    ``key_mismatch`` letter's is its envelope's ``sku_id`` (``DeadLetter.sku_id``, which the runtime
    takes from the envelope). Sent with the key it came with, another SKU's, it was dead-lettered again;
    so keyed it lands on its SKU's partition, where its SKU's events are handled in order.
    ``OriginalUnreadable`` when the letter names no ``sku_id`` (not one the runtime wrote)."""
    if letter.reason != KEY_MISMATCH:
        return key
    if not letter.sku_id:
        raise OriginalUnreadable(
            f"cannot replay {letter.original_topic}@{letter.original_offset}: a key_mismatch letter names "
            "no sku_id to key its record by; produce the event again keyed by its SKU"
        )
    return letter.sku_id.encode()


def replay_headers(stage: str) -> list[tuple[str, bytes]]:
    """The headers of a republished record: ``stage``, the one that dead-lettered it (its letter's).

    A replay goes to the topic, which every consumer group of it reads: without the header, a letter
    of trainstore replayed to ``sku.captioned`` would make the generator render it again on the GPU.
    The runtime commits a record whose header names another stage without handling it.
    """
    return [(REPLAY_STAGE_HEADER, stage.encode())] if stage else []


def _origin(letter: DeadLetter) -> bytes:
    """The record a letter is of, and the stage that dead-lettered it, as one sha256: its topic, partition,
    offset and bytes (as the letter holds them), so letters that only claim one offset are never merged.
    A digest, not the tuple of them: a listed letter keeps it (~70 bytes, not ~300)."""
    ref = letter.original_value_ref
    value = ref.sha256 if ref is not None else hashlib.sha256(letter.original_value_b64.encode()).hexdigest()
    record = [letter.original_topic, letter.original_partition, letter.original_offset, letter.stage, value]
    return hashlib.sha256(json.dumps(record).encode()).digest()


class _Marking:
    """The replay markers of the records a replay sent, written as Kafka acknowledges them. Only the
    records not marked yet are held; of a batch written, its count and its failures' errors."""

    def __init__(self, store: ObjectStore, lock: _ReplayLock | None = None):
        self.store = store
        self.lock = lock  # told, after each batch, where the records still unmarked begin
        # Sent, and not marked yet: each record's letters (all are marked with its one copy), its future.
        self.unmarked: list[tuple[list[StoredLetter], Any]] = []
        self.waiting_since: float | None = None  # when an acknowledged record was first seen unmarked
        self.marked = 0  # records acknowledged and marked
        self.errors: set[str] = set()  # why Kafka failed the records that failed (never marked)

    def acknowledged(self) -> int:
        """The records Kafka acknowledged so far: those marked, and those done since the last batch."""
        return self.marked + sum(1 for _, future in self.unmarked if future.is_done and future.succeeded())

    def mark_due(self) -> None:
        """Mark the records acknowledged so far once a batch is due (``MARK_EVERY_RECORDS``,
        ``MARK_EVERY_S``); ``DlqError`` when the store refuses, which stops the replay."""
        acknowledged = sum(1 for _, future in self.unmarked if future.is_done and future.succeeded())
        if not acknowledged:
            return
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
        if acknowledged < MARK_EVERY_RECORDS and now - self.waiting_since < MARK_EVERY_S:
            return
        try:
            self.mark_acknowledged()
        except (TransientError, BadInput) as exc:
            raise DlqError(f"could not write the replay markers of the records sent so far ({exc})") from exc
        except Exception as exc:  # bare, it went past the replay's handling and skipped its final marking
            raise DlqError(
                f"could not write the replay markers of the records sent so far ({type(exc).__name__}: {exc})"
            ) from exc

    def mark_acknowledged(self) -> None:
        """Write the markers of every record acknowledged and not marked yet; a record still in flight
        waits for a later batch, and one that failed is never marked."""
        done = [(members, future) for members, future in self.unmarked if future.is_done]
        acknowledged = [
            (member, future.value) for members, future in done if future.succeeded() for member in members
        ]
        # Forgotten only once written: a batch cut short (the store, Ctrl-C) is written whole again.
        _write_markers(self.store, acknowledged, utc_now().isoformat())
        written = {id(future) for _, future in done}  # not `is_done` again: one done since is unmarked
        self.unmarked = [(members, future) for members, future in self.unmarked if id(future) not in written]
        self.marked += sum(1 for _, future in done if future.succeeded())
        self.errors.update(str(future.exception) for _, future in done if future.failed())
        self.waiting_since = None
        if self.lock is not None and acknowledged:
            # The idempotent producer keeps a partition's records in the order sent: the records of
            # this replay still unmarked lie after the last one marked, each partition's. A replay that
            # takes the lock over once this one is killed reads from there, not from where it began.
            after: dict[int, int] = {}
            for _, metadata in acknowledged:
                after[metadata.partition] = max(after.get(metadata.partition, 0), metadata.offset + 1)
            self.lock.advance(after)


class _ReplayLock:
    """The one replay of a DLQ that runs: an object created only if none is there (``put_new``), with
    who holds it, and removed at its end. While the replay runs, a thread writes its heartbeat, a
    second object, every ``LOCK_REFRESH_S``, and checks that the lock is still this replay's. (A refresh
    that rewrote the lock could write over another replay's lock that had taken it over since it was
    read.) The holder rewrites its lock only by a compare-and-swap on a version that it read as its own
    (``advance``: where its unmarked records begin, after each batch of markers). A stale lock is taken
    over, and the lock released, by a compare-and-swap on the version read (``replace_if``,
    ``delete_if``): two replays taking one stale lock over at once each removed whatever lock was there
    and created their own, and both ran. The sender looks at the lock itself before a send (``check``)."""

    def __init__(
        self,
        store: ObjectStore,
        dlq_topic: str,
        original_from: dict[int, int],
        *,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self._pause = pause  # waits ``LOCK_RETRY_S`` between the tries to take the lock
        self.key = f"{REPLAY_LOCK_PREFIX}/{dlq_topic}.json"
        self.dlq_topic = dlq_topic
        self.holder: dict[str, Any] = {
            "run": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid_namespace": _pid_namespace(),
            "pid": os.getpid(),
            "started_at": utc_now().isoformat(),
            # Where the original topic ended before this replay sent anything: its records come after.
            # Moved on past each batch of its records once they are marked (``advance``).
            "original_from": {str(partition): offset for partition, offset in original_from.items()},
        }
        # Why this replay stops: another holds the lock now (taken over as stale), or its heartbeat failed.
        self.lost: str | None = None
        # When (``_alive_clock``) the last look that found the lock this replay's began.
        self._seen_held_at = float("-inf")
        self._stopped = threading.Event()
        self._refresher: threading.Thread | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock, or ``DlqError`` naming the replay that holds it. Returns the holder of a
        stale lock taken over (a replay killed), None when there was none."""
        body = json.dumps(self.holder, sort_keys=True).encode()
        killed: dict[str, Any] | None = None
        looked_at = _alive_clock()
        try:
            missing = 0  # tries that found something at the key, then no object there
            for attempt in range(3):  # a lock released, or taken over by another, between the tries
                if attempt:
                    self._pause(LOCK_RETRY_S)
                if self.store.put_new(self.key, body):
                    break
                held = self._held()
                if held is None:
                    missing += 1
                    continue
                holder, written_at, version = held
                age_s = (datetime.now(UTC) - self._alive_at(holder, written_at)).total_seconds()
                if not self._stale(holder, age_s):
                    # The lock's text is whoever wrote it: escaped, as a letter's is.
                    who = escape_control_characters(
                        f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started_at')}"
                    )
                    raise DlqError(
                        f"another replay of {self.dlq_topic} is running: {who} (lock "
                        f"{self.store.uri_for(self.key)}, last alive {age_s:.0f}s ago); run one at a "
                        f"time. A lock whose replay was not seen alive for {LOCK_STALE_S:.0f}s is taken over"
                    )
                # Only while it is still the stale lock read: of replays taking it over at once, one
                # does, and the others find this one's lock when they look again.
                taking_over = {**self.holder, "original_from": self._from_the_earlier(holder)}
                if self.store.replace_if(self.key, json.dumps(taking_over, sort_keys=True).encode(), version):
                    self.holder = taking_over
                    self.store.delete(self._heartbeat_key(holder.get("run")))
                    killed = holder
                    break
            else:
                if missing == 3:  # every time: 'try again' would meet the same thing
                    raise DlqError(
                        f"could not take the replay lock {self.store.uri_for(self.key)}: something that is "
                        "no object stands there (a folder, or a link to nothing?); remove it"
                    )
                raise DlqError(f"could not take the replay lock {self.store.uri_for(self.key)}; try again")
        except (TransientError, BadInput) as exc:
            raise DlqError(f"could not take the replay lock {self.store.uri_for(self.key)}: {exc}") from exc
        except DlqError:
            raise
        except Exception as exc:  # the store's, mapped or not (a flock NFS refuses): said, no traceback
            raise DlqError(
                f"could not take the replay lock {self.store.uri_for(self.key)}: {type(exc).__name__}: {exc}"
            ) from exc
        self._seen_held_at = looked_at
        self._beat_at = looked_at  # when (``_alive_clock``) the heartbeat was last written, or the lock
        self._refresher = threading.Thread(target=self._refresh, name="dlq-replay-lock", daemon=True)
        self._refresher.start()
        return killed

    def _from_the_earlier(self, killed: dict[str, Any]) -> dict[str, int]:
        """This replay's ``original_from``, each partition's offset no later than the killed replay's: it
        has not read what that one sent yet, and should it be killed too before it marks those records,
        the replay that takes its lock over reads them from there. Before, it read from where this one
        began, after them, and sent their letters again."""
        earlier = dict(self.holder["original_from"])
        theirs = killed.get("original_from")
        for partition, offset in theirs.items() if isinstance(theirs, dict) else ():
            if isinstance(offset, int) and not isinstance(offset, bool):
                earlier[str(partition)] = min(offset, earlier.get(str(partition), offset))
        return earlier

    def advance(self, original_from: dict[int, int]) -> None:
        """Move the lock's ``original_from`` on to ``original_from``'s offsets (where this replay's records
        not marked yet begin; never back), so that a replay taking the lock over once this one is killed
        reads only the records sent since its last batch of markers. Before, it read from where this
        replay began: every record a long replay had sent, and any other producer's since. Only while
        the lock is this replay's (a compare-and-swap on the version read); when another replay took it
        over, the next ``check`` stops the sends. A store that is away leaves the earlier offsets, which
        a takeover reads from, only further."""
        held_from = self.holder["original_from"]
        moved = {
            **held_from,
            **{str(p): offset for p, offset in original_from.items() if offset > held_from.get(str(p), -1)},
        }
        if moved == held_from:
            return
        holder = {**self.holder, "original_from": moved}
        # Any store error: raised bare here, after a batch of markers, it went past the replay's handling
        # of its failures, and the records acknowledged since were never marked.
        with contextlib.suppress(Exception):
            held = self._held()
            if held is None or held[0].get("run") != self.holder["run"]:
                self._look(_alive_clock())  # says it is lost
                return
            if self.store.replace_if(self.key, json.dumps(holder, sort_keys=True).encode(), held[2]):
                self.holder = holder
            else:
                self._look(_alive_clock())

    def check(self) -> None:
        """``DlqError`` when another replay holds the lock now; called before each send. The lock is
        read once the last look that found it this replay's began ``LOCK_CHECK_S`` ago or more, on a
        clock that counts a pause (``_alive_clock``): a replay paused past ``LOCK_STALE_S`` and taken
        over meanwhile stops before its next send. Before, it sent on until its heartbeat thread next
        looked, up to ``LOCK_REFRESH_S`` later, alongside the replay that took over."""
        if self.lost is None:
            looked_at = _alive_clock()
            if looked_at - self._seen_held_at < LOCK_CHECK_S:
                return
            try:
                self._look(looked_at)
            except (TransientError, BadInput) as exc:
                raise DlqError(
                    f"could not read the replay lock {self.store.uri_for(self.key)} ({exc})"
                ) from exc
            except Exception as exc:  # bare, it went past the replay's handling: the sent were not marked
                raise DlqError(
                    f"could not read the replay lock {self.store.uri_for(self.key)} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        if self.lost is not None:
            raise DlqError(self.lost)

    def release(self) -> None:
        """Stop refreshing, and remove the lock if it is still this replay's."""
        self._stopped.set()
        if self._refresher is not None:
            self._refresher.join()
        # Any store error: a lock left is taken over once stale, and raised here (in the replay's
        # ``finally``) it was a traceback that hid the replay's own report.
        with contextlib.suppress(Exception):
            held = self._held()
            if held is not None and held[0].get("run") == self.holder["run"]:
                self.store.delete_if(self.key, held[2])  # never the lock of a replay that took it over
            self.store.delete(self._heartbeat_key(self.holder["run"]))

    def _heartbeat_key(self, run: object) -> str:
        named = run if isinstance(run, str) and _RUN.fullmatch(run) else "unnamed"
        heartbeat = f"{self.dlq_topic}.json.{named}.alive"  # a Kafka name is ASCII: a byte a character
        if len(heartbeat) <= MAX_SEGMENT_BYTES:
            return f"{REPLAY_LOCK_PREFIX}/{heartbeat}"
        # A topic past 211 characters (Kafka takes 249) made a key segment past the store's 255 bytes,
        # which raised out of the takeover and the release. '~' is in no topic name: no other's key.
        digest = hashlib.sha256(self.dlq_topic.encode()).hexdigest()[:32]
        return f"{REPLAY_LOCK_PREFIX}/{self.dlq_topic[:150]}~{digest}.json.{named}.alive"

    def _alive_at(self, holder: dict[str, Any], written_at: datetime) -> datetime:
        """When the lock's replay last showed it runs: its heartbeat, or the lock's own writing."""
        try:
            return max(written_at, self.store.modified_at(self._heartbeat_key(holder.get("run"))))
        except ObjectMissing:
            return written_at

    def _held(self) -> tuple[dict[str, Any], datetime, str] | None:
        """Who holds the lock, when it was last written, and its version (``get_versioned``); None when
        there is none."""
        try:
            # The version before the time: a lock written in between looks newer, never older.
            text, version = self.store.get_versioned(self.key)
            written_at = self.store.modified_at(self.key)
        except ObjectMissing:
            return None
        try:
            holder = json.loads(text)
        except ValueError:  # not JSON: a lock that names nobody, stale once old enough
            holder = {}
        return (holder if isinstance(holder, dict) else {}), written_at, version

    def _look(self, looked_at: float) -> None:
        """Read the lock: when it is still this replay's, note ``looked_at``; else say it is lost."""
        held = self._held()
        if held is None or held[0].get("run") != self.holder["run"]:
            self.lost = (
                f"the replay lock {self.store.uri_for(self.key)} was taken over by another "
                f"replay (this one was not seen alive for {LOCK_STALE_S:.0f}s); stopped here"
            )
        else:
            self._seen_held_at = max(self._seen_held_at, looked_at)

    @staticmethod
    def _stale(holder: dict[str, Any], age_s: float) -> bool:
        """Whether the replay holding the lock is gone: no heartbeat for ``LOCK_STALE_S``, or a process
        of this machine (same host name and pid namespace) that no longer runs."""
        if age_s > LOCK_STALE_S:
            return True
        here = holder.get("host") == socket.gethostname() and holder.get("pid_namespace") == _pid_namespace()
        pid = holder.get("pid")
        if not here or not isinstance(pid, int) or pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, OverflowError):  # past a C int (a lock written by hand): no process
            return True
        except PermissionError:  # another user's process: it runs
            return False
        return False

    def _refresh(self) -> None:
        heartbeat = self._heartbeat_key(self.holder["run"])
        while not self._stopped.wait(LOCK_REFRESH_S):
            # What the store refused, for the message: a failed look was told as a heartbeat not written,
            # which was never tried, and an operator looked at the wrong object.
            failed = "could not be read"
            try:
                self._look(_alive_clock())
                if self.lost is not None:
                    return
                failed = "could not write its heartbeat"
                self.store.put_bytes(heartbeat, b"", "text/plain")
                self._beat_at = _alive_clock()
            except (TransientError, BadInput) as exc:
                # The store is away: the markers fail too, and stop the replay. Retried without limit, a
                # heartbeat that alone kept failing let the lock look stale to a second replay, which took
                # it over and sent the letters again beside this one.
                if (away_s := _alive_clock() - self._beat_at) >= LOCK_GIVE_UP_S:
                    self.lost = (
                        f"the replay lock {self.store.uri_for(self.key)} {failed} for {away_s:.0f}s "
                        f"({exc}); stopped here, before another replay takes it over"
                    )
                    return
            except Exception as exc:  # which ended this thread unseen
                # Its lock would look stale to a second replay, which took it over and sent the letters
                # again beside this one: this one stops at its next send (``check``) instead.
                self.lost = (
                    f"the replay lock {self.store.uri_for(self.key)} {failed} "
                    f"({type(exc).__name__}: {exc}); stopped here, before another replay takes it over"
                )
                return


def _alive_clock() -> float:
    """Seconds on a clock that counts the time the machine was suspended too (Linux's CLOCK_BOOTTIME;
    the monotonic clock elsewhere), so a replay sees that it was paused."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


@dataclass(frozen=True)
class _SentTo:
    """Where a replayed record went (as kafka-python's ``RecordMetadata`` says)."""

    topic: str
    partition: int
    offset: int


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's end offset of ``topic``; empty when it does not exist (the replay says so)."""
    if topic not in _list_topics(settings):
        return {}
    consumer = KafkaConsumer(
        **kafka_connection(settings), client_id="skuforge-dlq", group_id=None, allow_auto_create_topics=False
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    except KafkaError as exc:
        raise DlqError(f"could not read where {topic} ends: {exc}") from exc
    finally:
        consumer.close()


def _mark_what_a_killed_replay_sent(
    settings: Settings, store: ObjectStore, dead: DeadLetterTopic, killed: dict[str, Any]
) -> None:
    """Mark the letters whose records a killed replay had delivered and not marked yet: the records of
    ``dead.original_topic`` from its lock's ``original_from`` (where the topic ended before it sent,
    moved on past each batch it marked: ``_ReplayLock.advance``), whose ``REPLAY_OF_HEADER`` names a
    letter of ``dead``. Before, the next replay sent those letters again."""
    original_from = killed.get("original_from")
    if not isinstance(original_from, dict) or not original_from:
        return  # a lock of an older replay, or one that had nothing to send to
    letters = {stored.marker_key: stored for stored in dead.letters}
    groups: dict[bytes, list[StoredLetter]] = {}
    for stored in dead.letters:
        groups.setdefault(stored.origin, []).append(stored)
    topic = dead.original_topic
    consumer = _dlq_consumer(settings)
    delivered: list[tuple[StoredLetter, Any]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        end = consumer.end_offsets(partitions)
        for tp in partitions:
            start = original_from.get(str(tp.partition), 0)
            consumer.seek(tp, max(int(start), 0) if isinstance(start, int) else 0)
        sent_by_it = f"what the killed replay sent to {topic}"
        for record in _records_to_end(consumer, end, timeout_s=READ_TIMEOUT_S, what=sent_by_it):
            marker = dict(record.headers or []).get(REPLAY_OF_HEADER)
            sent = letters.get(marker.decode(errors="replace")) if marker else None
            if sent is not None:
                where = _SentTo(record.topic, record.partition, record.offset)
                delivered.extend((member, where) for member in groups[sent.origin])
    except KafkaError as exc:
        raise DlqError(f"could not read what the killed replay sent to {topic}: {exc}") from exc
    finally:
        consumer.close()
    try:
        _write_markers(store, delivered, utc_now().isoformat())
    except (TransientError, BadInput) as exc:
        raise DlqError(f"could not mark what the killed replay had sent ({exc})") from exc


def _pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``): a pid names a process only within it."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _write_markers(
    store: ObjectStore, acknowledged: list[tuple[StoredLetter, Any]], replayed_at: str
) -> None:
    """One replay marker per republished letter, saying where its copy went."""
    for stored, metadata in acknowledged:
        store.put_json(
            stored.marker_key,
            {
                "dead_letter": {
                    "topic": stored.dlq_topic,
                    "partition": stored.partition,
                    "offset": stored.offset,
                },
                "reason": stored.reason,
                "event_id": stored.event_id,
                "sku_id": stored.sku_id,
                "republished": {
                    "topic": metadata.topic,
                    "partition": metadata.partition,
                    "offset": metadata.offset,
                },
                "replayed_at": replayed_at,
            },
        )


def format_replay(dead: DeadLetterTopic, report: ReplayReport, *, dry_run: bool) -> str:
    """The replay run for a terminal."""
    # A reason is the letter writer's text: escaped, as in format_summary.
    by_reason = Counter(escape_control_characters(stored.reason) for stored in report.republished)
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(by_reason.items()))
    verb = "would replay" if dry_run else "replayed"
    head = f"{verb} {len(report.republished)} dead letters from {dead.dlq_topic} to {dead.original_topic}"
    line = (
        head
        + (f" ({reasons})" if reasons else "")
        + f"; skipped {report.already_replayed} already replayed, {report.not_selected} not selected"
        + (f", {len(report.other_topic)} of another topic" if report.other_topic else "")
    )
    if not report.permanent:
        return line
    left = Counter(escape_control_characters(stored.reason) for stored in report.permanent)
    return (
        f"{line}\nleft {len(report.permanent)} with a permanent reason "
        f"({', '.join(f'{reason}: {count}' for reason, count in sorted(left.items()))}): their events "
        "are bad, and a replay would only dead-letter them again; replay them on purpose with "
        "--reason REASON or --include-permanent"
    )


def format_unreadable(report: ReplayReport, *, dry_run: bool = False) -> str | None:
    """Which letters were (would be) not replayed because their original bytes cannot be read; None
    when none."""
    if not report.unreadable:
        return None
    count = len(report.unreadable)
    letters = "1 dead letter" if count == 1 else f"{count} dead letters"
    if dry_run:
        verdict = f"{letters} would not be replayed, the others would"
    else:
        verdict = f"{letters} {'was' if count == 1 else 'were'} not replayed, the others were"
    shown = "; ".join(escape_control_characters(why) for _, why in report.unreadable[:3])
    more = f" (and {count - 3} more)" if count > 3 else ""
    return (
        f"{verdict}: {shown}{more}. They stay unmarked; leave them out "
        "with --reason or --since, or restore their originals in the store"
    )


def format_other_topic(dead: DeadLetterTopic, report: ReplayReport) -> str | None:
    """Why the letters of another original topic were not replayed, and what to do; None when none."""
    if not report.other_topic:
        return None
    topics = Counter(stored.original_topic for stored in report.other_topic)
    count = len(report.other_topic)
    letters = "1 dead letter" if count == 1 else f"{count} dead letters"
    listed = ", ".join(f"{escape_control_characters(topic)} ({n})" for topic, n in sorted(topics.items()))
    return (
        f"{letters} of {dead.dlq_topic} came from another topic than {dead.original_topic}: {listed}; "
        "not replayed (neither here nor there: a mirrored or shared DLQ crosses environments). Replay "
        "them from their own topic's DLQ, and leave them out here with --since or --reason"
    )


def _list_topics(settings: Settings) -> set[str]:
    try:
        return listed_topics(settings, client_id="skuforge-dlq")
    except TransientError as exc:
        raise DlqError(str(exc)) from exc


def original_record(letter: DeadLetter, store: ObjectStore) -> tuple[bytes | None, bytes]:
    """The original record's key and value: carried in the letter, or kept in the object store when
    they were too large for it (checked against their sha256; ``DlqError`` if gone or changed)."""
    where = f"{letter.original_topic}@{letter.original_offset}"
    try:
        key = store.read_verified(letter.original_key_ref) if letter.original_key_ref else None
        value = store.read_verified(letter.original_value_ref) if letter.original_value_ref else None
        return (
            key if key is not None else _b64(letter.original_key_b64),
            value if value is not None else (_b64(letter.original_value_b64) or b""),
        )
    except BadInput as exc:
        raise OriginalUnreadable(f"cannot replay {where}: {exc}") from exc
    except TransientError as exc:  # the store is away: nothing could be marked either
        raise DlqError(f"cannot replay {where}: {exc}") from exc
    except ValueError as exc:  # binascii.Error, or a str with non-ASCII characters (b64decode's own)
        raise OriginalUnreadable(
            f"cannot replay {where}: its original bytes are not valid base64 ({exc}); "
            "leave it out with --reason or --since"
        ) from exc


def _b64(text: str | None) -> bytes | None:
    # Strictly: by default b64decode drops characters outside the alphabet, so a corrupted letter
    # ("eyJ4IjogMX0=!!garbage") replayed other bytes than its record's without a word.
    return base64.b64decode(text, validate=True) if text is not None else None
