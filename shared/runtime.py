"""The stage runtime: the one place that does poll → decode → validate → handle → produce → flush → commit.

A stage is a typed function from one input event to its output events::

    stage = Stage("gate")

    @stage.handler(IMAGE_MATTED)
    def handle(event: Envelope[ImageMatted], ctx: Context) -> list[Emit]:
        ...  # read inputs with ctx.store, write outputs to ctx.store
        return [Emit(GATE_ACCEPTED, accepted, key="decision")]

    stage.run()

Delivery (docs/architecture.md, "Delivery"):

* **At least once, effectively once in the store.** The handler writes its objects under
  deterministic ids before returning; the runtime then produces every output (idempotent
  producer, acks=all), flushes, checks each send, and only then commits the input offsets.
  A crash anywhere before the commit redelivers the input; the handler overwrites the same
  objects and the runtime re-produces outputs with the same ``event_id`` (derived from the
  input's event_id and the output's ``key``). Consumers de-duplicate by ``event_id``; the
  runtime itself skips inputs it has already completed in this process.
* **Bad input** (not JSON, wrong schema, a ``schema_version`` newer than the topic's, a Kafka key
  other than the envelope's ``sku_id``, ``BadInput`` raised by the handler) goes to ``<topic>.dlq``
  with the reason and the original bytes; the stream goes on. Fields the stage does not know are not
  bad input: they are ignored (tolerant reader).
* **Transient faults** (``TransientError``, Kafka errors) pause the partition and seek back to
  the failed record; it is retried after an exponential back-off. Nothing after it in that
  partition is processed or committed meanwhile, so per-SKU order holds. Other partitions go on.
  Once the stage is stopping, such a fault (a handler giving its batch up) is no retry: the record
  is left uncommitted for the next run, logged at info and not counted.
* **Unexpected handler errors** are retried like transient ones, up to ``handler_max_attempts``,
  then dead-lettered with reason ``handler_error``, so one poison message cannot stall a partition.
  The attempts are this process's: counted on when the record's partition moves away and back.
* **SIGTERM/SIGINT/SIGHUP** finish the batch in hand (a handler may give it up: ``Context.stopping``),
  commit, close, run the stage's ``on_stop`` actions and return 0 (SIGHUP: the terminal of a
  ``skuforge run`` closed; left ignored where it was, as under ``nohup``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import random
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any, Generic, TypeVar

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    FencedInstanceIdError,
    GroupAuthorizationFailedError,
    GroupMaxSizeReachedError,
    InvalidSessionTimeoutError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition
from PIL import Image
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel, ValidationError

from schemas.common import ImageRef, ObjectRef
from schemas.envelope import (
    DLQ_INLINE_MAX_BYTES,
    MAX_DEAD_LETTER_DETAIL_CHARS,
    MAX_DEAD_LETTER_REASON_CHARS,
    MAX_ERROR_CLASS_CHARS,
    MAX_STAGE_NAME_CHARS,
    DeadLetter,
    Envelope,
    EnvelopeHeader,
    SchemaClaim,
    clipped,
    derive_id,
    utc_now,
)
from schemas.events import subject_sku_id
from schemas.topics import DLQ_SUFFIX, Topic
from shared.bus import (
    RECORD_REFUSALS,
    StoppedBootstrapping,
    close_stopped_producer,
    kafka_connection,
    make_consumer,
    make_envelope,
    make_producer,
    producer_stopped_for_good,
    read_envelope,
    read_header,
    read_schema_claim,
    topics_held_in_group,
    unreachable,
)
from shared.commands import run_command
from shared.config import ConfigError, Settings, load_settings
from shared.dlq import REPLAY_STAGE_HEADER
from shared.errors import BadInput, TransientError
from shared.group_lag import GroupLagWatcher, watched_groups
from shared.images import UInt8Array, decode_image, decode_mask, refuse_oversized, refuse_too_many_pixels
from shared.observability import (
    BATCH_FAILURE_WARNING_INTERVAL_S,
    KEYLESS_WARNING_INTERVAL_S,
    HealthServer,
    StageMetrics,
    configure_logging,
    log_context,
)
from shared.signals import Stopped, heard
from shared.store import ObjectStore, open_settings_store

P = TypeVar("P", bound=BaseModel)
ModelInput = TypeVar("ModelInput")  # what a model call takes per input: an image, an image and its box
ModelOutput = TypeVar("ModelOutput")  # what it gives per input: a mask, a sentence

# Failed attempts of this many records are kept, the oldest dropped first: a record's count outlives a
# move of its partition, and one that the partition's next holder handled is never committed here.
ATTEMPTS_KEPT = 10_000
# Inputs completed here that a stage remembers by event id, the oldest forgotten first, to skip a copy
# redelivered or replayed (docs/delivery.md; tests/test_docs_delivery.py holds the doc's figures to these).
DEDUPE_WINDOW = 10_000
# Inputs handled and delivered whose offset commits failed (the group's coordinator away, the partitions'
# leaders still serving) are held for the commit to come; past this many the stage takes no input until
# one goes through. Before, it held every one for as long as the coordinator was away (their records and
# outputs in memory, each batch's duplicate check rebuilt from all of them), and a restart redid them all.
MAX_UNCOMMITTED_INPUTS = 1_000
# A failing commit is retried every retry_backoff_initial_s while a stage is idle or holds its intake: its
# warning is logged at once, then at most this often per error. Before, every retry logged one.
COMMIT_FAILURE_WARNING_INTERVAL_S = 60.0
# A stage holding no partition of a topic that has some rejoins after this long, then doubling.
REJOIN_FIRST_S = 20.0
REJOIN_MAX_S = 600.0
# The skuforge_messages_total outcome of a replayed record (docs/delivery.md) that another stage
# dead-lettered: committed without being handled.
REPLAY_FOR_OTHER_STAGE = "replay_for_other_stage"
# How long a starting stage waits for its input topics' metadata before joining its group anyway.
METADATA_WAIT_S = 10.0
log = logging.getLogger("skuforge.runtime")


class KafkaUnreachable(TransientError):
    """A starting stage found no broker at ``SKUFORGE_KAFKA_BOOTSTRAP`` (or could not log in to it): a
    deployment fault, reported in one line by ``stage_command`` (``skuforge run``, a stage's ``python -m``)
    instead of kafka-python's traceback."""

    def __init__(self, settings: Settings, cause: Exception, client_id: str) -> None:
        self.bootstrap = settings.kafka_bootstrap
        super().__init__(unreachable(settings, cause, client_id=client_id))


@dataclass(frozen=True)
class Emit:
    """One output event of a handler.

    ``key`` names the output among the outputs of the same input ("variant-3", "decision");
    with the input's event_id it makes the output's deterministic event_id.
    """

    topic: Topic[Any]
    payload: BaseModel
    key: str
    sku_id: str | None = None  # defaults to the input's sku_id


@dataclass
class Context:
    """What a handler may use besides its event: the store, settings, metrics, a logger, and whether
    the stage is stopping."""

    stage: str
    store: ObjectStore
    settings: Settings
    metrics: StageMetrics
    log: logging.Logger
    # The event a per-event handler is handling, and the actions registered per event (by id()), each
    # with its event: once an envelope is gone another may take its id, and the actions of an input
    # rewound unread, left until the end of the poll, ran for an input of a second batch route.
    _handling: Envelope[Any] | None = field(default=None, repr=False)
    _actions: dict[int, tuple[Envelope[Any], list[Callable[[], None]]]] = field(
        default_factory=dict, repr=False
    )
    _model_batch_failures: _Throttle = field(
        default_factory=lambda: _Throttle(BATCH_FAILURE_WARNING_INTERVAL_S), repr=False
    )
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)  # the stage's

    @property
    def stopping(self) -> bool:
        """Whether the stage was asked to stop (SIGTERM...). The stop waits for the batch in hand: a
        handler whose batch takes long (many model calls) may give up what it has not started by raising
        a ``TransientError``; its inputs stay uncommitted, and the next run or the partition's next owner
        handles them again."""
        return self._stop.is_set()

    def after_commit(self, action: Callable[[], None], event: Envelope[Any] | None = None) -> None:
        """Run ``action`` once this input's outcome is committed; drop it if the input is tried again or
        its handler raises an unexpected error (its ``handler_error`` letter runs none of them).

        For a stage's own counters: the runtime may run a handler more than once for one input (a
        failed produce, flush or retry rewinds the batch; a failing batch is retried event by event),
        so ``metrics.decisions.labels("accepted").inc()`` in the handler counts every attempt, while
        ``ctx.after_commit(metrics.decisions.labels("accepted").inc)`` counts the input once. A batch
        handler names the ``event`` the action belongs to.
        """
        event = event if event is not None else self._handling
        if event is None:
            raise ValueError("a batch handler must name the event: ctx.after_commit(action, event)")
        self._actions.setdefault(id(event), (event, []))[1].append(action)

    def _take_actions(self, event: Envelope[Any]) -> list[Callable[[], None]]:
        return self._actions.pop(id(event), (event, []))[1]

    def note_model_batch_failure(self, model: str, error: Exception, batch_size: int) -> None:
        """Count a call of ``model`` on ``batch_size`` inputs that raised ``error``, its inputs then run
        one a call, and log it at most once per ``BATCH_FAILURE_WARNING_INTERVAL_S`` per model, as the
        runtime does a failed micro-batch: a model that cannot take batches fails every call of several
        inputs, and a warning per call flooded the log while nothing counted them."""
        self.metrics.model_batch_failures.labels(self.metrics.stage, model).inc()
        failed = self._model_batch_failures.due(model)
        if failed is None:
            return
        self.log.warning(
            "the %s model failed on %d inputs together (%s); running them one at a time (logged at most "
            "once per %g s per model; skuforge_model_batch_failures_total counts every call)",
            model,
            batch_size,
            error,
            BATCH_FAILURE_WARNING_INTERVAL_S,
            extra={
                "model": model,
                "batch_size": batch_size,
                "failed_calls_since_last_warning": failed,
            },
        )

    def together_or_alone(
        self,
        model: str,
        inputs: Sequence[ModelInput],
        run: Callable[[Sequence[ModelInput]], Sequence[ModelOutput]],
        failure: type[Exception] = Exception,
    ) -> list[ModelOutput]:
        """``run`` on all ``inputs`` in one timed call of ``model``, or one input a call when the model
        fails on them together (``failure``), counted and warned of (``note_model_batch_failure``).

        An export that folded or fixed its batch fails every call of several inputs yet runs one a call:
        before, the captioner dead-lettered every SKU of several photos as handler_error, and the
        matting stage failed the batch, which the runtime ran again an event at a time, every image read
        and decoded again. A model that fails on one input too fails as before, and so does one broken
        for every call (a ``TransientError``, such as a matting model whose blank warm-up image fails
        too): the device, not the batch, is at fault.
        """
        try:
            with self.metrics.model_call(model, len(inputs)):
                return list(run(inputs))
        except TransientError:
            raise
        except failure as exc:
            if len(inputs) == 1:
                raise
            self.note_model_batch_failure(model, exc, len(inputs))
        outputs: list[ModelOutput] = []
        for one in inputs:
            with self.metrics.model_call(model, 1):
                outputs.extend(run([one]))
        return outputs

    def refuse_unread(self, ref: ImageRef, why: str) -> None:
        """Refuse ``ref`` on the event's figures alone, before it is read: more pixels than
        ``max_image_pixels`` (``why`` says what the stage needs the image at its stated size for) or
        more bytes than ``max_image_bytes``.

        For a stage that reads several objects of one event: each is refused before any is read (read,
        they are held in memory whole only to be refused). ``decode_image`` would decode a baseline JPEG
        over the pixel limit scaled down, and the stage's size check then blame a truthful event as
        ``dimension_mismatch``.
        """
        refuse_too_many_pixels(ref.width, ref.height, self.settings.max_image_pixels, why)
        refuse_oversized(ref.bytes, self.settings.max_image_bytes)

    def read_image(self, ref: ObjectRef) -> Image.Image:
        """The stored image ``ref`` points at, checked against its sha256, decoded within the limits.

        Raises ``BadInput`` (object_missing, checksum_mismatch, or an image refusal) for the DLQ. A
        reference larger than ``max_image_bytes`` is refused before anything is read.
        """
        refuse_oversized(ref.bytes, self.settings.max_image_bytes)
        return decode_image(
            self.store.read_verified(ref),
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_image_bytes,
        )

    def read_mask(self, ref: ObjectRef) -> UInt8Array:
        """The stored mask ``ref`` points at as 0/255 uint8 HxW; checked and refused as ``read_image``."""
        refuse_oversized(ref.bytes, self.settings.max_image_bytes)
        return decode_mask(
            self.store.read_verified(ref),
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_image_bytes,
        )


Handler = Callable[[Envelope[Any], Context], Sequence[Emit]]
# A batch handler returns, per input and in order, its outputs or the BadInput that refuses it.
BatchHandler = Callable[[Sequence[Envelope[Any]], Context], Sequence[Sequence[Emit] | BadInput]]


def refuse_clock_skew(event: Envelope[Any], max_ahead_s: float, setting: str) -> None:
    """Refuse (``clock_skew``) an event dated more than ``max_ahead_s`` ahead of this stage's clock.

    For a stage that orders an item's events by their ``produced_at`` (the trainstore's rows, the
    console's gate verdicts): a producer's clock running ahead (or a hostile producer, year 9999) would
    outrank every later event of the item while the skew lasts. ``setting`` names the limit's variable."""
    produced_at = event.produced_at
    if produced_at.tzinfo is None:  # every producer writes UTC; naive and aware times do not compare
        produced_at = produced_at.replace(tzinfo=UTC)
    ahead_s = (produced_at - utc_now()).total_seconds()
    if ahead_s > max_ahead_s:
        raise BadInput(
            "clock_skew",
            f"the event was produced at {produced_at.isoformat()}, {ahead_s:.0f} s ahead of this "
            f"stage's clock ({setting} allows {max_ahead_s:g}); "
            f"fix the clock of its producer {event.producer[:64]!r}",
        )


@dataclass
class _Route(Generic[P]):
    topic: Topic[P]
    handle: Handler | None = None
    handle_batch: BatchHandler | None = None


@dataclass
class _Retry:
    """A record that must be tried again after a back-off."""

    error: BaseException


@dataclass
class _Outcome:
    """The result of one input record: outputs to produce, or a dead letter, or nothing (duplicate).

    ``counted`` (the ``skuforge_messages_total`` outcome) and ``after_commit`` take effect only once
    the record's offset is committed, so an input that is rewound and handled again counts once.
    """

    outputs: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # topic, key, value
    event_id: str | None = None
    dead_reason: str | None = None
    counted: str = "ok"
    after_commit: list[Callable[[], None]] = field(default_factory=list)


def _duplicate() -> _Outcome:
    """The outcome of a copy of an event completed here or handled earlier in the batch: committed and
    counted, and no event id, so its commit does not mark the event completed. Only the first copy's
    own outcome does that, once its outputs are durable: the copy's, committed beside a first copy
    that was rewound (its partition backed off) or dead-lettered, made the rewound copy, and a later
    replay of the letter, duplicates too, and the event's outputs were never produced."""
    return _Outcome(counted="duplicate")


class _Throttle:
    """Says when a warning about a key (a topic, a model, an error) is due: its first time, then at most
    once per ``interval_s``, with how many times it came since the last one logged (this one included)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float | None, int]] = {}  # per key: when last logged, how many since

    def due(self, key: str) -> int | None:
        """The times it came since the last warning, or None while the last is under ``interval_s`` old."""
        now = time.monotonic()
        warned_at, seen = self._seen.get(key, (None, 0))
        seen += 1
        if warned_at is not None and now - warned_at < self.interval_s:
            self._seen[key] = (warned_at, seen)
            return None
        self._seen[key] = (now, 0)
        return seen

    def clear(self) -> None:
        """Forget every key: the trouble ended, and its next occurrence is warned of at once."""
        self._seen.clear()


# An output record larger than this cannot be produced (the producer's max_request_size and the
# broker's message.max.bytes are both about 1 MiB by default, record overhead included): the input is
# dead-lettered as ``output_too_large`` instead of being retried forever.
MAX_OUTPUT_RECORD_BYTES = 1_000_000

# A dead letter must fit in one Kafka record: an original key or value over DLQ_INLINE_MAX_BYTES
# (schemas/envelope.py) is kept in the object store under this prefix and the letter points at it.
DLQ_ORIGINALS_PREFIX = "dlq-originals"


# A dead letter sent again small (its original in the store) keeps its input's Kafka key up to this many
# bytes, a SHA-256's hex digest: a longer key is cut to that digest, so a key alone past the DLQ topic's
# max.message.bytes does not hold the partition for good.
SMALL_LETTER_KEY_BYTES = 64


def _key_digest(key: bytes) -> bytes:
    """A dead letter's own Kafka key for an input key too long to keep: the same key, the same digest."""
    return hashlib.sha256(key).hexdigest().encode()


@dataclass(frozen=True)
class _KeptOriginal:
    """A dead letter's original key and value, each base64 inline or referenced in the store."""

    key_b64: str | None
    key_ref: ObjectRef | None
    value_b64: str | None
    value_ref: ObjectRef | None


# A dead letter that waits (its DLQ topic refuses it even small) is retried at the back-off's pace, up to
# every SKUFORGE_RETRY_BACKOFF_MAX_S: its retry's lines (dead-lettered, the producer stopped for good,
# the partition paused) are logged at its first refusal, then at most once per this many seconds.
WAITING_LETTER_LOG_INTERVAL_S = 600.0


@dataclass
class _WaitingLetter:
    """A dead letter its DLQ topic refused even with its original in the store (``_send_letter_small``):
    its input's partition retries it until the topic takes it. ``kept``: its original, stored once for
    all its retries; ``logged_at``: when a retry of it was last logged (None: not yet)."""

    dlq_topic: str
    kept: _KeptOriginal
    since: float
    logged_at: float | None = None

    def quiet(self, now: float) -> bool:
        """Whether a retry now goes unlogged (at debug): one was logged under the interval ago."""
        return self.logged_at is not None and now - self.logged_at < WAITING_LETTER_LOG_INTERVAL_S


def _letter_key(record: ConsumerRecord) -> tuple[str, int, int, str, str]:
    """A record's place, and its key's and value's digests: a topic deleted and created again starts at
    offset 0 with other records."""
    return (
        record.topic,
        record.partition,
        record.offset,
        hashlib.sha256(record.key or b"").hexdigest(),
        hashlib.sha256(record.value or b"").hexdigest(),
    )


def stale_after_s(settings: Settings) -> float:
    """How long the loop may go without a beat before /healthz says it is stuck: one batch may take
    up to ``max_poll_interval_ms`` (then the group drops the member), plus a minute for the poll after.
    A fixed 15 minutes would kill a stage configured for longer batches in the middle of one."""
    return settings.max_poll_interval_ms / 1000 + 60.0


class Stage:
    """A Kafka stage: consumes its input topics, calls the handler, produces outputs.

    ``default_metrics_port`` is used unless ``SKUFORGE_METRICS_PORT`` is set (0 = any free port).
    ``ready`` adds the stage's own readiness (model loaded...) to the runtime's. ``max_uncommitted``:
    the handled inputs that may wait for a commit that keeps failing (``MAX_UNCOMMITTED_INPUTS``).
    """

    def __init__(
        self,
        name: str,
        *,
        settings: Settings | None = None,
        store: ObjectStore | None = None,
        default_metrics_port: int = 0,
        ready: Callable[[], bool] = lambda: True,
        dedupe_window: int = DEDUPE_WINDOW,
        max_uncommitted: int = MAX_UNCOMMITTED_INPUTS,
    ) -> None:
        if not name or len(name) > MAX_STAGE_NAME_CHARS:
            # Every dead letter names its stage, and a replay finds it by that name: cut, it would not.
            raise ValueError(f"a stage's name takes 1 to {MAX_STAGE_NAME_CHARS} characters, got {len(name)}")
        self.name = name
        # Kafka client ids of its own for each: shared, the broker's per-client quotas and metrics, its
        # request logs and `kafka-consumer-groups.sh --describe` could not tell the reads from the writes.
        self._consumer_client_id = f"{name}-consumer"
        self._producer_client_id = f"{name}-producer"
        self.settings = settings or load_settings()
        self.store = store or open_settings_store(self.settings)
        self.metrics = StageMetrics(name)
        self.store.on_write = self.metrics.observe_store_write
        self._routes: dict[str, _Route[Any]] = {}
        self._stage_ready = ready
        self._metrics_port = (
            self.settings.metrics_port if self.settings.metrics_port is not None else (default_metrics_port)
        )
        self._stop = threading.Event()
        self._stop_actions: list[Callable[[], None]] = []  # on_stop's, in the order registered
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self.health: HealthServer | None = None
        # Per-partition back-off state, and per-record attempt counts, newest last (_unexpected).
        self._resume_at: dict[TopicPartition, float] = {}
        self._failures: dict[TopicPartition, int] = {}
        self._attempts: OrderedDict[tuple[TopicPartition, int], int] = OrderedDict()
        # Dead letters the DLQ topic refused even small, by their input (_letter_key), until they go or
        # their partition does (_send_letter_small): each retry sends the letter again, but stores its
        # original, and counts it, once, and logs it at most every few minutes. Not bounded: a letter that
        # waits holds its partition, so at most one waits per partition held (_forget_delivered).
        self._waiting_letters: dict[tuple[str, int, int, str, str], _WaitingLetter] = {}
        # Those whose partition moved away while they waited, newest last, up to ATTEMPTS_KEPT: the same
        # letter refused again once the group hands the partition back waits since it first did. One bound
        # for all partitions (_move_waiting drops the oldest), of small entries (two digests and the
        # original's store refs, never its bytes: about 2 KB): some 20 MB at most, however many
        # partitions never come back.
        self._moved_letters: OrderedDict[tuple[str, int, int, str, str], _WaitingLetter] = OrderedDict()
        # Inputs completed (outputs durable, offset committed) by this process, newest last, by (topic,
        # event id): one stage's outputs to two topics may share an id (the gate's accepted or pending
        # decision on one item), and a consumer of both must not take the one for a replay of the other.
        self._completed: OrderedDict[tuple[str, str], None] = OrderedDict()
        # Inputs handled and produced whose offset commit failed, per partition, oldest first (_commit).
        self._uncommitted: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]] = {}
        self._max_uncommitted = max_uncommitted
        self._intake_held = False  # every partition paused while max_uncommitted inputs wait (_hold_intake)
        # The rebalance listener's commits of those (_commit_revoked) not answered yet, one token each.
        self._revoked_commits: set[object] = set()
        # Inputs of the batch being handled (and of those awaiting a commit), by (topic, event id):
        # _completed is filled only at the commit, so two copies of one event in one poll (a producer's
        # retry, a replay beside its original) were both handled and both produced their outputs.
        self._in_batch: set[tuple[str, str]] = set()
        self._last_left_over_commit = 0.0
        # Per input topic, warned of at most once a minute: records with no key (_warn_keyless), batches
        # whose handler raised (_note_batch_failure).
        self._keyless = _Throttle(KEYLESS_WARNING_INTERVAL_S)
        self._batch_failures = _Throttle(BATCH_FAILURE_WARNING_INTERVAL_S)
        self._commit_failures = _Throttle(COMMIT_FAILURE_WARNING_INTERVAL_S)  # per error type (_commit)
        self._dedupe_window = dedupe_window
        self._last_lag_update = 0.0
        self._joined = False  # set once the group gave us a first assignment (possibly empty)
        # Watchdog for a join that handed out no partitions of a topic (see _check_assignment).
        self._missing_since: float | None = None
        self._rejoin_after_s = REJOIN_FIRST_S
        self._last_assignment_check = 0.0
        self.context = Context(
            stage=name,
            store=self.store,
            settings=self.settings,
            metrics=self.metrics,
            log=logging.getLogger(f"skuforge.{name}"),
            _stop=self._stop,
        )

    # -- wiring -------------------------------------------------------------------------------

    def handler(self, topic: Topic[P]) -> Callable[[Handler], Handler]:
        """Register ``fn(event, ctx) -> [Emit, ...]`` for the events of ``topic``."""

        def register(fn: Handler) -> Handler:
            self._add_route(_Route(topic, handle=fn))
            return fn

        return register

    def batch_handler(self, topic: Topic[P]) -> Callable[[BatchHandler], BatchHandler]:
        """Register ``fn(events, ctx) -> [[Emit, ...] | BadInput, ...]`` for micro-batched inference."""

        def register(fn: BatchHandler) -> BatchHandler:
            self._add_route(_Route(topic, handle_batch=fn))
            return fn

        return register

    def _add_route(self, route: _Route[Any]) -> None:
        topic_name = self.settings.topic_name(route.topic)
        if topic_name in self._routes:
            raise ValueError(f"stage {self.name} already handles {topic_name}")
        self._routes[topic_name] = route
        self.metrics.declare_input_topic(topic_name)

    @property
    def topics(self) -> list[str]:
        """Names of the topics this stage consumes."""
        return list(self._routes)

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit and return."""
        self._stop.set()

    def on_stop(self, action: Callable[[], None]) -> Callable[[], None]:
        """Run ``action`` each time ``run`` ends, by a stop (SIGTERM...), a fatal error or a broker it
        cannot reach: for what the stage's handlers hold (a model server's clients and their threads).

        Actions run once the batch in hand is done and the Kafka clients are closed, the last registered
        first; one that fails is logged and the others still run. Not after a second stop, which ends
        the stage where it stands: a handler's calls may still be in flight, and the process is going.
        """
        self._stop_actions.append(action)
        return action

    def ready(self) -> bool:
        """Has joined its consumer group, is not stopping, and the stage's own check passes."""
        return self._joined and not self._stop.is_set() and self._stage_ready()

    def run(self, *, install_signal_handlers: bool | None = None, serve_health: bool = True) -> int:
        """Consume until stopped (SIGTERM, SIGINT, SIGHUP or ``stop()``); returns the exit code (0). A
        second one while it stops raises ``Stopped`` or ``KeyboardInterrupt`` where it stands."""
        if not self._routes:
            raise RuntimeError(f"stage {self.name} has no handler: register one with @stage.handler(topic)")
        if install_signal_handlers is None:
            install_signal_handlers = threading.current_thread() is threading.main_thread()
        previous: dict[int, Any] = {}  # the signal handlers to put back when the stage returns
        if install_signal_handlers:
            stops: list[int] = []

            def request_stop(signum: int, _frame: object) -> None:
                # The first stop finishes the batch, commits and closes the clients, which waits up to
                # SKUFORGE_FLUSH_TIMEOUT_S for a broker that is away; a second one, as Ctrl-C again
                # means, ends it where it stands (what is not committed is redone on the next run).
                if stops:
                    raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)
                stops.append(signum)
                self.stop()

            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                # SIGHUP's default ended the stage where it stood, its batch in hand uncommitted and
                # its clients not closed; one already ignored (`nohup skuforge run`) stays ignored.
                if heard(signum):
                    previous[signum] = signal.signal(signum, request_stop)
        ended_where_it_stood = False
        try:
            return self._run(serve_health)
        except KeyboardInterrupt:  # a second stop (Stopped), or Ctrl-C where no handler hears it
            ended_where_it_stood = True
            raise
        finally:
            # Before, they stayed: a SIGTERM after the stage returned only asked it to stop again, and
            # the process (a test run, a command run after the stage) was not stopped by it.
            for stopping, handler in previous.items():
                signal.signal(stopping, handler if handler is not None else signal.SIG_DFL)
            if not ended_where_it_stood:
                self._run_stop_actions()

    def _run_stop_actions(self) -> None:
        for action in reversed(self._stop_actions):
            try:
                action()
            except Exception:  # the others still run, and run() returns or raises what the loop did
                log.exception("a stop action failed", extra={"stage": self.name, "action": repr(action)})

    def _run(self, serve_health: bool) -> int:
        """``run`` once its signal handlers are in place."""
        self.store.note_relative_root()  # here, not where the store opened: logging is set up by now
        if serve_health:
            self.health = HealthServer(
                self.metrics.registry,
                host=self.settings.metrics_host,
                port=self._metrics_port,
                ready=self.ready,
                stale_after_s=stale_after_s(self.settings),
            ).start()
        try:
            # Both bootstrap in their constructors; a stop meanwhile abandons them (closed once they are).
            self._consumer = make_consumer(
                self.settings,
                group_id=f"{self.settings.consumer_group_prefix}.{self.name}",
                client_id=self._consumer_client_id,
                stop=self._stop,
            )
            self._producer = make_producer(self.settings, client_id=self._producer_client_id, stop=self._stop)
        except (KafkaError, StoppedBootstrapping) as exc:  # no broker answered, or the stop came first
            # The client that gave up: its last connection error is the refusal's cause.
            failed = self._consumer_client_id if self._consumer is None else self._producer_client_id
            if self._consumer is not None:
                try:
                    self._consumer.close(autocommit=False)
                except Exception as close_exc:
                    # Raised, it replaced the KafkaUnreachable below: the user read the close's error,
                    # not that no broker answered, and the health port stayed bound.
                    log.warning(
                        "closing the consumer of a stage that found no broker: %s: %s",
                        type(close_exc).__name__,
                        close_exc,
                        exc_info=close_exc,
                        extra={"stage": self.name},
                    )
                self._consumer = None
            if self.health:
                self.health.stop()
            if isinstance(exc, StoppedBootstrapping):
                log.info("stage stopped before it reached Kafka", extra={"stage": self.name})
                return 0
            raise KafkaUnreachable(self.settings, exc, client_id=failed) from exc
        self._consumer.subscribe(self.topics, listener=_RebalanceListener(self))
        self._await_topic_metadata()
        lag_watcher = None
        if self.settings.group_lag_interval_s > 0:
            groups = watched_groups(
                self.name,
                self.topics,
                lambda stage: f"{self.settings.consumer_group_prefix}.{stage}",
                self.settings.topic_name,
            )
            lag_watcher = GroupLagWatcher(
                kafka_connection(self.settings),
                groups,
                self.metrics.group_lag,
                self.settings.group_lag_interval_s,
                read_failures=self.metrics.group_lag_read_failures,
            ).start()
        log.info("stage started", extra={"stage": self.name, "topics": self.topics})
        try:
            while not self._stop.is_set():
                self._resume_due_partitions()
                self._hold_intake()
                try:
                    batch = self._consumer.poll(timeout_ms=200)
                except InvalidSessionTimeoutError:
                    # Refused at the join, outside the range the broker allows: a traceback before, at
                    # every restart, that named neither the setting nor the broker's bounds.
                    raise ConfigError(
                        f"the Kafka broker refused SKUFORGE_SESSION_TIMEOUT_MS="
                        f"{self.settings.session_timeout_ms}: it must lie within the broker's "
                        "group.min.session.timeout.ms and group.max.session.timeout.ms (6000 and 1800000 "
                        "by default); set it within them, or raise the broker's limit"
                    ) from None
                except FencedInstanceIdError:  # a commit_async's answer, or a join, said so
                    raise self._fenced() from None
                except (
                    GroupMaxSizeReachedError,
                    GroupAuthorizationFailedError,
                    TopicAuthorizationFailedError,
                ) as exc:
                    raise self._refused(exc) from None
                if self.health:
                    self.health.beat()
                if batch:
                    self._process_batch(batch)
                else:
                    self._commit_left_over()
                self._note_join()
                self._update_lag()
                self._check_assignment()
        finally:
            log.info("stage stopping", extra={"stage": self.name})
            # Not ready once the loop is gone: a caller that runs this stage again after a fault (the
            # console's intake) answered /readyz 200 while nothing consumed. The partitions' pauses
            # belong to this consumer's assignment (their records' failed attempts to the process).
            self._joined = False
            try:
                self._commit_left_over(now=True)
            except Exception:  # the stop goes on; a restart redelivers what is not committed
                log.exception("committing at the stop failed", extra={"stage": self.name})
            self._forget_partitions([*self._resume_at, *self._uncommitted])
            try:
                # An error of any step (a bug, a kafka-python assertion; leaving the group as the broker
                # goes away; a producer flushing into an outage) skipped the closes after it, left the
                # health port bound and made run() raise after a stop that had committed all it could,
                # or hid what the loop itself raised. What the producer did not get acknowledged is not
                # lost: its inputs were not committed, and the next run redoes them.
                if lag_watcher is not None:
                    self._stop_step(lag_watcher.stop, "stopping the group-lag watcher")
                self._stop_step(self._await_revoked_commits, "awaiting the commits of revoked partitions")
                consumer = self._consumer
                self._stop_step(
                    lambda: consumer.close(autocommit=False),
                    "closing the consumer",
                    "; if it did not leave the group, the group moves its partitions at the session timeout",
                )
                if self._producer is not None:
                    producer = self._producer
                    self._stop_step(
                        lambda: producer.close(timeout=self.settings.flush_timeout_s),
                        "closing the producer",
                        "; unacknowledged outputs are redone from their uncommitted inputs",
                    )
            finally:
                if self.health:
                    self.health.stop()
        return 0

    def _stop_step(self, step: Callable[[], object], doing: str, consequence: str = "") -> None:
        """Run one step of the stop; an error of it is logged, and the stop goes on to the next."""
        try:
            step()
        except Exception as exc:
            log.warning(
                "%s at the stop: %s: %s%s",
                doing,
                type(exc).__name__,
                exc,
                consequence,
                exc_info=exc,
                extra={"stage": self.name},
            )

    def _await_topic_metadata(self, timeout_s: float | None = None) -> None:
        """Join the group only once the consumer's metadata lists the input topics' partitions.

        A member whose first join ran before it had the topics' metadata was, now and then, left
        out of its group for good by kafka-python 3.0.12: it re-joined when the metadata came, took
        part in no later rebalance, and was dropped at the session timeout (seen twice in
        bench/scale.py's start-ups, each time on the member that had joined first). ``subscribe``
        has asked for the metadata; kafka-python's I/O thread fetches it, so this only waits for the
        cache. A topic that does not exist yet is left to ``_check_assignment``.
        """
        assert self._consumer is not None
        timeout_s = METADATA_WAIT_S if timeout_s is None else timeout_s
        cluster = self._consumer._cluster
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            if all(cluster.partitions_for_topic(topic) for topic in self.topics):
                return
            time.sleep(0.05)
        if self._stop.is_set():  # no join follows: the loop ends before its first poll
            return
        log.warning(
            "joining the group without partition metadata for every topic",
            extra={"stage": self.name, "topics": self.topics, "waited_s": timeout_s},
        )

    def _note_join(self) -> None:
        """Mark the stage joined once its group is stable, even with nothing assigned.

        Under cooperative rebalancing kafka-python calls ``on_partitions_assigned`` only for
        partitions a member gains, so a member that joins with none (more members than partitions,
        or the first round of a cooperative move) is never told; the group state says it.
        """
        if self._joined:
            return
        assert self._consumer is not None
        if self._consumer.group_metadata().state is MemberState.STABLE:
            self._joined = True

    def _check_assignment(self) -> None:
        """Rejoin the group when it handed this member no partition of a topic that has some.

        kafka-python 3.0 can complete a join before it has a new topic's metadata ("No partition
        metadata for topic"); the group then holds none of that topic's partitions, and sometimes
        never rebalances when the metadata arrives (dpkp/kafka-python#2377). After
        ``_rejoin_after_s`` without any partition of a topic whose partitions the cluster lists,
        the stage subscribes again, which makes a fresh join, unless the group's coordinator says
        another member holds the topic: the assignor balances partitions in all, not per topic, so
        with several input topics and replicas a member often holds none of one topic, and with more
        members than partitions none at all. The wait doubles each time (up to ``REJOIN_MAX_S``).
        """
        now = time.monotonic()
        if not self._joined or now - self._last_assignment_check < 1.0:
            return
        self._last_assignment_check = now
        assert self._consumer is not None
        held = {tp.topic for tp in self._consumer.assignment()}
        # The consumer's metadata cache (refreshed every metadata_max_age_ms), never a blocking fetch:
        # KafkaConsumer.partitions_for_topic waits without a timeout when the broker is away.
        cluster = self._consumer._cluster
        missing = [t for t in self.topics if t not in held and cluster.partitions_for_topic(t)]
        if not missing:
            self._missing_since = None
            self._rejoin_after_s = REJOIN_FIRST_S
            return
        if self._missing_since is None:
            self._missing_since = now
            return
        if now - self._missing_since < self._rejoin_after_s:
            return
        if self._held_by_another_member(missing):
            # The cooperative-sticky assignor balances partitions in all, not per topic: with several
            # input topics (the trainstore's four) a second replica routinely gets whole topics and
            # this one none of them. Rejoining for that churned the group every 20 s, without end.
            self._missing_since = None
            return
        log.warning(
            "holding no partition of a topic that has some; subscribing again to rejoin the group",
            extra={"stage": self.name, "topics": missing, "waited_s": round(now - self._missing_since, 1)},
        )
        # Offsets are committed after every batch, but not those of a commit that failed: left to
        # _forget_partitions, their inputs were handled again by the partition's next holder, and their
        # outputs sent twice.
        self._commit_left_over(now=True)
        self._forget_partitions(list(self._consumer.assignment()))
        self._consumer.unsubscribe()  # leaves the group
        self._joined = False
        self._consumer.subscribe(self.topics, listener=_RebalanceListener(self))
        self._missing_since = None
        self._rejoin_after_s = min(self._rejoin_after_s * 2, REJOIN_MAX_S)

    def _held_by_another_member(self, topics: list[str]) -> bool:
        """Whether the group's coordinator says some member holds a partition of each of ``topics``
        (False when it cannot be asked: then the fault this watchdog is for is assumed)."""
        assert self._consumer is not None
        try:
            held = topics_held_in_group(self.settings, self._consumer.config["group_id"], self.name)
        except TransientError as exc:
            log.warning("cannot ask the group's coordinator who holds what", extra={"error": str(exc)})
            return False
        return set(topics) <= held

    # -- the batch ----------------------------------------------------------------------------

    def _process_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        try:
            self._handle_batch(batch)
        finally:
            self.context._actions.clear()  # those of inputs that will be tried again

    def _handle_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        started = time.monotonic()
        self._in_batch = {
            (tp.topic, outcome.event_id)
            for tp, entries in self._uncommitted.items()
            for _, outcome in entries
            if outcome.event_id is not None
        }
        outcomes: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]] = {}
        for tp, records in batch.items():
            route = self._routes[tp.topic]
            if route.handle_batch is not None:
                continue
            done: list[tuple[ConsumerRecord, _Outcome]] = []
            for record in records:
                result = self._process_one(route, tp, record)
                if isinstance(result, _Retry):
                    self._back_off(tp, record.offset, result.error)
                    break
                done.append((record, result))
            outcomes[tp] = done
        for route in self._routes.values():
            if route.handle_batch is not None:
                topic_name = self.settings.topic_name(route.topic)
                parts = {tp: recs for tp, recs in batch.items() if tp.topic == topic_name}
                if parts:
                    outcomes.update(self._process_micro_batch(route, parts))

        delivered_all = self._produce_and_flush(outcomes, batch)
        self._commit(outcomes)
        if delivered_all:
            self.metrics.batch_seconds.labels(self.name).observe(time.monotonic() - started)

    def _process_one(
        self, route: _Route[Any], tp: TopicPartition, record: ConsumerRecord
    ) -> _Outcome | _Retry:
        decoded = self._decode(route, record)
        if isinstance(decoded, (_Outcome, _Retry)):
            return decoded
        if self._seen(tp, decoded.event_id):
            return _duplicate()
        assert route.handle is not None
        with log_context(decoded.trace_id, decoded.sku_id):
            started = time.monotonic()
            self.context._handling = decoded
            outcome: _Outcome | _Retry
            try:
                emits = route.handle(decoded, self.context)
                outcome = self._encode_refusing_actions(decoded, emits, tp)
            except BadInput as exc:
                outcome = self._dead_letter(record, exc.reason, str(exc), exc, decoded)
            except (TransientError, KafkaError) as exc:
                outcome = _Retry(exc)
            except Exception as exc:
                outcome = self._unexpected(tp, record, exc, decoded)
            finally:
                self.context._handling = None
                self.metrics.handler_seconds.labels(self.name).observe(time.monotonic() - started)
        actions = self.context._take_actions(decoded)
        if isinstance(outcome, _Outcome):
            outcome.after_commit = actions
            self._in_batch.add((tp.topic, decoded.event_id))
        return outcome

    def _encode_refusing_actions(self, event: Envelope[Any], emits: Any, tp: TopicPartition) -> _Outcome:
        """``_encode_outputs``; when it refuses the handler's outputs (``output_too_large``, a bad
        key), the event's ``after_commit`` actions are dropped: they count what the handler did (the
        gate's decision), which never left the stage. (A handler that registers an action and then
        raises ``BadInput`` itself keeps it: its refusal is what it counts.)"""
        try:
            return self._encode_outputs(event, emits, tp)
        except BadInput:
            self.context._take_actions(event)
            raise

    def _seen(self, tp: TopicPartition, event_id: str) -> bool:
        """Whether this event was completed here, or handled earlier in this batch."""
        return (tp.topic, event_id) in self._completed or (tp.topic, event_id) in self._in_batch

    def _process_micro_batch(
        self, route: _Route[Any], parts: dict[TopicPartition, list[ConsumerRecord]]
    ) -> dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]]:
        """Decode every record, call the batch handler once on the valid ones, map results back."""
        assert route.handle_batch is not None
        slots: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome | _Retry | Envelope[Any]]]] = {}
        events: list[Envelope[Any]] = []
        for tp, records in parts.items():
            slots[tp] = []
            for record in records:
                decoded = self._decode(route, record)
                if isinstance(decoded, Envelope) and self._seen(tp, decoded.event_id):
                    decoded = _duplicate()
                if isinstance(decoded, Envelope):
                    # A second copy later in this batch is a duplicate; should this one be retried
                    # instead, its partition is rewound and it is handled then: nothing is lost.
                    self._in_batch.add((tp.topic, decoded.event_id))
                    events.append(decoded)
                slots[tp].append((record, decoded))
                if isinstance(decoded, _Retry):
                    # Its partition is rewound to it: the records after it would be handled (model work
                    # included) only to be thrown away, and handled again after the back-off.
                    break

        results: Sequence[Sequence[Emit] | BadInput | BaseException] = []
        if events:
            started = time.monotonic()
            try:
                results = list(route.handle_batch(events, self.context))
                if len(results) != len(events):
                    raise RuntimeError(
                        f"batch handler returned {len(results)} results for {len(events)} events"
                    )
            except (TransientError, KafkaError) as exc:
                results = [exc] * len(events)
            except Exception as exc:
                # Isolate the poison: run each event alone so one bad event cannot fail the rest.
                self._note_batch_failure(route, exc, len(events))
                for event in events:
                    self.context._take_actions(event)  # the failed call's
                results = [self._single(route, event) for event in events]
            finally:
                self.metrics.handler_seconds.labels(self.name).observe(time.monotonic() - started)

        by_event = {id(event): result for event, result in zip(events, results, strict=True)}
        out: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]] = {}
        for tp, entries in slots.items():
            done: list[tuple[ConsumerRecord, _Outcome]] = []
            for record, decoded in entries:
                if isinstance(decoded, _Retry):  # its dead letter could not be written yet
                    self._back_off(tp, record.offset, decoded.error)
                    break
                if isinstance(decoded, _Outcome):
                    done.append((record, decoded))
                    continue
                result = by_event[id(decoded)]
                with log_context(decoded.trace_id, decoded.sku_id):
                    if isinstance(result, BadInput):
                        outcome: _Outcome | _Retry = self._dead_letter(
                            record, result.reason, str(result), result, decoded
                        )
                    elif isinstance(result, (TransientError, KafkaError)):
                        outcome = _Retry(result)
                    elif isinstance(result, BaseException):
                        outcome = self._unexpected(tp, record, result, decoded)
                    else:
                        try:
                            outcome = self._encode_refusing_actions(decoded, result, tp)
                        except BadInput as exc:
                            outcome = self._dead_letter(record, exc.reason, str(exc), exc, decoded)
                        except Exception as exc:
                            outcome = self._unexpected(tp, record, exc, decoded)
                actions = self.context._take_actions(decoded)
                if isinstance(outcome, _Outcome):
                    outcome.after_commit = actions
                if isinstance(outcome, _Retry):
                    self._back_off(tp, record.offset, outcome.error)
                    break
                done.append((record, outcome))
            out[tp] = done
        return out

    def _note_batch_failure(self, route: _Route[Any], exc: Exception, batch_size: int) -> None:
        """Count a micro-batch whose handler raised, and log it at most once a minute per topic.

        Its events are then run one at a time: a handler that fails on every batch (a model that cannot
        take batches) made the stage slow, and nothing said why."""
        topic = self.settings.topic_name(route.topic)
        error = type(exc).__name__
        self.metrics.batch_handler_failures.labels(self.name, topic, error).inc()
        failed = self._batch_failures.due(topic)
        if failed is None:
            return
        log.warning(
            "a batch handler raised %s: %s; the batch's %d events are run one at a time (logged at most "
            "once per %g s per topic; skuforge_batch_handler_failures_total counts every batch)",
            error,
            exc,
            batch_size,
            BATCH_FAILURE_WARNING_INTERVAL_S,
            exc_info=exc,
            extra={
                "stage": self.name,
                "topic": topic,
                "batch_size": batch_size,
                "failed_batches_since_last_warning": failed,
            },
        )

    def _single(self, route: _Route[Any], event: Envelope[Any]) -> Sequence[Emit] | BadInput | BaseException:
        assert route.handle_batch is not None
        try:
            return route.handle_batch([event], self.context)[0]
        except Exception as exc:  # not KeyboardInterrupt or SystemExit: those end the stage, as elsewhere
            return exc

    # -- decoding, encoding, dead letters -----------------------------------------------------

    def _decode(self, route: _Route[Any], record: ConsumerRecord) -> Envelope[Any] | _Outcome | _Retry:
        replayed_for = _replay_stage(record)
        if replayed_for is not None and replayed_for != self.name:
            # `skuforge dlq replay` republishes to the topic, which every group of it reads; only the
            # stage that dead-lettered the record handles it again (a trainstore letter must not make
            # the generator render on the GPU again), even if it is not JSON: committed, counted.
            log.debug(
                "skipped a replay for another stage",
                extra={
                    "stage": self.name,
                    "replay_stage": replayed_for,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
            return _Outcome(counted=REPLAY_FOR_OTHER_STAGE)
        if not record.value:
            # A tombstone has no value; `skuforge dlq replay` sends a dead-lettered one back as b"".
            return self._dead_letter(
                record, "empty_message", "the message has no value (a tombstone) or an empty one", None, None
            )
        try:
            event = read_envelope(route.topic, record.value)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                return self._dead_letter(record, "not_json", _first_error(exc), exc, None)
            # A newer version's payload, or its envelope, may not validate here; say so rather than
            # "schema_invalid".
            try:
                header: EnvelopeHeader | None = read_header(record.value)
            except ValidationError:
                header = None
            try:
                claim: SchemaClaim | EnvelopeHeader | None = header or read_schema_claim(record.value)
            except ValidationError:
                claim = None
            refused = self._refuse_schema(route, record, claim, header) if claim is not None else None
            # The header names the event even when its payload is refused: the letter carries its ids.
            return refused or self._dead_letter(record, "schema_invalid", _summarise(exc), exc, header)
        refused = self._refuse_schema(route, record, event, event)
        if refused is not None:
            return refused
        # The key decides the partition, so the member, that handles a SKU: an event keyed by another
        # SKU (a foreign producer's bug) would be handled on that SKU's partition, racing its own SKU's
        # events on another member. One with no key is the event it says; only its order is not kept.
        if record.key is None:
            self._warn_keyless(record, event)
        elif record.key != event.sku_id.encode():
            key = record.key.decode("utf-8", "backslashreplace")
            detail = (
                f"Kafka key {key!r} is not the envelope's sku_id {event.sku_id!r}; one SKU's events keep "
                "their order only keyed by it: `skuforge dlq replay` sends it so keyed"
            )
            return self._dead_letter(record, "key_mismatch", detail, None, event)
        # An event about another SKU than its key would also be stored under either id.
        subject = subject_sku_id(event.payload)
        if subject is not None and subject != event.sku_id:
            detail = f"the event is keyed {event.sku_id!r} but carries SKU {subject!r}"
            return self._dead_letter(record, "sku_mismatch", detail, None, event)
        return event

    def _warn_keyless(self, record: ConsumerRecord, event: Envelope[Any]) -> None:
        """Log a record with no Kafka key, at most once per ``KEYLESS_WARNING_INTERVAL_S`` per topic.

        A producer that never keys its events sent one line per record, thousands a minute; each is
        counted in ``skuforge_unkeyed_messages_total`` (at its commit), which alerts can read."""
        seen = self._keyless.due(record.topic)
        if seen is None:
            return
        with log_context(event.trace_id, event.sku_id):
            log.warning(
                "records with no Kafka key: handled, but their SKUs' events may be handled out of order "
                f"(logged at most once per {KEYLESS_WARNING_INTERVAL_S:g} s per topic; "
                "skuforge_unkeyed_messages_total counts them all)",
                extra={
                    "stage": self.name,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "unkeyed_since_last_warning": seen,
                },
            )

    def _refuse_schema(
        self,
        route: _Route[Any],
        record: ConsumerRecord,
        claim: SchemaClaim | EnvelopeHeader,
        header: EnvelopeHeader | None,
    ) -> _Outcome | _Retry | None:
        """A dead letter for an event that claims another schema, or a version this topic does not
        carry; it names the event when its ``header`` could be read."""
        name, version = route.topic.schema_name, route.topic.version
        if (claim.schema_name, claim.schema_version) == (name, version):
            return None
        if claim.schema_name == name and claim.schema_version > version:
            # A higher version is a breaking change (docs/delivery.md, "Versioning"): this consumer
            # cannot know what changed, so it refuses the event instead of misreading it.
            detail = (
                f"topic {record.topic} carries {name} v{version}; this event is "
                f"v{claim.schema_version}, which this consumer does not know (a breaking change "
                f"gets its own topic, {name}.v{claim.schema_version})"
            )
            return self._dead_letter(record, "schema_version_unsupported", detail, None, header)
        detail = (
            f"topic {record.topic} carries {name} v{version}, got {claim.schema_name} v{claim.schema_version}"
        )
        return self._dead_letter(record, "schema_mismatch", detail, None, header)

    def _encode_outputs(self, event: Envelope[Any], emits: Sequence[Emit], tp: TopicPartition) -> _Outcome:
        keys = [emit.key for emit in emits]
        if len(set(keys)) != len(keys):
            raise ValueError(f"handler of {self.name} returned duplicate output keys: {keys}")
        outputs = []
        for emit in emits:
            sku_id = emit.sku_id or event.sku_id
            # produced_at is now, also when a redelivered, rewound or replayed input makes an output again
            # under its first event_id: the copy is dated later, and where consumers order an item's events
            # by that time it outranks what was dated between (the trainstore takes a re-emitted
            # gate.accepted of an item's first render over a reviewer's approval of its second render).
            # Left so on purpose: a time derived from the input would date a gate run again after a
            # threshold change like the first run, and the console keeps an open task's newest copy by
            # this time (docs/console.md). Which of the two should win is a design decision.
            envelope = make_envelope(
                emit.topic,
                emit.payload,
                event_id=derive_id(event.event_id, self.name, emit.key),
                sku_id=sku_id,
                trace_id=event.trace_id,
                producer=self.name,
            )
            key, value = sku_id.encode(), envelope.model_dump_json().encode()
            if len(key) + len(value) > MAX_OUTPUT_RECORD_BYTES:
                raise BadInput(
                    "output_too_large",
                    f"its {emit.topic.name} event would be {len(key) + len(value)} bytes, over the "
                    f"{MAX_OUTPUT_RECORD_BYTES} a Kafka record may carry",
                )
            outputs.append((self.settings.topic_name(emit.topic), key, value))
        return _Outcome(outputs=outputs, event_id=event.event_id)

    def _dead_letter(
        self,
        record: ConsumerRecord,
        reason: str,
        detail: str,
        error: BaseException | None,
        event: EnvelopeHeader | None,
    ) -> _Outcome | _Retry:
        # A letter that waits is made again at each retry: its original (over 256 KiB) was stored at its
        # first refusal, and its line was logged then. Before, each retry stored and logged it again.
        waiting = self._waiting_letter(record)
        kept = waiting.kept if waiting is not None else None
        try:
            key_b64, key_ref = self._keep_original(record, "key", record.key, kept=kept)
            value_b64, value_ref = self._keep_original(record, "value", record.value or b"", kept=kept)
        except Exception as exc:
            # The store is away, or refuses the original's key (a folder in its way): the letter cannot
            # be whole yet, and one without the original would lose the record. Before, any refusal
            # but a TransientError escaped the loop and ended the stage, at every restart again.
            if not isinstance(exc, TransientError):
                log.error(
                    "cannot keep a dead letter's original; the partition waits",
                    exc_info=exc,
                    extra={"stage": self.name, "topic": record.topic, "offset": record.offset},
                )
            return _Retry(exc)
        # The reason and detail may hold the input's own text (a handler's BadInput, an exception's
        # message): cut to the letter's bounds with a mark, the reason for the DLQ metric's label too.
        # Before, a long one made a letter Kafka refused, and the partition stalled at every retry.
        reason = clipped(reason, MAX_DEAD_LETTER_REASON_CHARS)
        letter = DeadLetter(
            reason=reason,
            detail=clipped(detail, MAX_DEAD_LETTER_DETAIL_CHARS),
            error_class=clipped(type(error).__name__, MAX_ERROR_CLASS_CHARS) if error else "",
            stage=self.name,
            original_topic=record.topic,
            original_partition=record.partition,
            original_offset=record.offset,
            original_key_b64=key_b64,
            original_value_b64=value_b64 or "",
            original_key_ref=key_ref,
            original_value_ref=value_ref,
            event_id=event.event_id if event else None,
            sku_id=event.sku_id if event else None,
            trace_id=event.trace_id if event else None,
            failed_at=utc_now(),
        )
        log.log(
            logging.DEBUG if waiting is not None and waiting.quiet(time.monotonic()) else logging.WARNING,
            "dead-lettered",
            extra={
                "stage": self.name,
                "reason": reason,
                "detail": detail[:500],
                "offset": record.offset,
                "topic": record.topic,
                "partition": record.partition,
            },
        )
        value = letter.model_dump_json().encode()
        # The letter's own key stays the original's (one SKU's letters in order), unless that is too large.
        dlq_key = record.key or b""
        if len(dlq_key) > DLQ_INLINE_MAX_BYTES:
            dlq_key = _key_digest(dlq_key)
        return _Outcome(
            outputs=[(record.topic + DLQ_SUFFIX, dlq_key, value)], dead_reason=reason, counted="dlq"
        )

    def _keep_original(
        self,
        record: ConsumerRecord,
        part: str,
        data: bytes | None,
        *,
        inline_max_bytes: int = DLQ_INLINE_MAX_BYTES,
        kept: _KeptOriginal | None = None,
    ) -> tuple[str | None, ObjectRef | None]:
        """``data`` base64-encoded for the letter, or, when over ``inline_max_bytes`` (too large for a
        Kafka record), stored under ``dlq-originals/<topic>/<partition>-<offset>-<sha256>.<part>`` (same
        key on a rewind) and referenced. The digest: a topic deleted and created again starts at offset 0,
        and its first large dead letter overwrote an earlier letter's original, which then could not be
        replayed. ``kept``: the original stored already, whole (a letter that waits), referenced as is."""
        if data is None:
            return None, None
        if len(data) <= inline_max_bytes:
            return base64.b64encode(data).decode(), None
        if kept is not None:
            return None, kept.key_ref if part == "key" else kept.value_ref
        digest = hashlib.sha256(data).hexdigest()[:16]
        key = f"{DLQ_ORIGINALS_PREFIX}/{record.topic}/{record.partition}-{record.offset}-{digest}.{part}"
        return None, self.store.put_bytes(key, data)

    def _unexpected(
        self, tp: TopicPartition, record: ConsumerRecord, exc: BaseException, event: Envelope[Any]
    ) -> _Outcome | _Retry:
        # The failed attempt's actions count what its handler did not finish: before, those of the last
        # attempt ran once its handler_error letter was committed.
        self.context._take_actions(event)
        # Counted on when the record's partition moved away and came back: dropped with it, a poison
        # record in a group that rebalanced more often than its attempts took never reached the DLQ,
        # and held its partition for good.
        attempt_key = (tp, record.offset)
        attempts = self._attempts.pop(attempt_key, 0) + 1
        self._attempts[attempt_key] = attempts
        while len(self._attempts) > ATTEMPTS_KEPT:
            self._attempts.popitem(last=False)
        log.error(
            "handler failed",
            exc_info=exc,
            extra={
                "stage": self.name,
                "attempt": attempts,
                "max_attempts": self.settings.handler_max_attempts,
            },
        )
        if attempts < self.settings.handler_max_attempts:
            return _Retry(exc)
        detail = f"{type(exc).__name__}: {exc} (after {attempts} attempts)"
        return self._dead_letter(record, "handler_error", detail, exc, event)

    # -- produce, flush, commit ---------------------------------------------------------------

    def _produce_and_flush(
        self,
        outcomes: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]],
        batch: dict[TopicPartition, list[ConsumerRecord]],
    ) -> bool:
        """Send every output and wait for acks=all; leaves in ``outcomes`` the inputs whose outputs were
        all acknowledged, rewinds each partition to its first input left out, and returns whether none was.

        Per partition, as the module says transient faults are: before, one partition's failed send
        (its dead letter's DLQ topic missing) rewound and backed off every partition of the poll, whose
        outputs then went again, and whose back-off grew with each of that partition's retries."""
        assert self._consumer is not None
        futures: dict[TopicPartition, list[tuple[str, FutureRecordMetadata]]] = {}
        failed: dict[TopicPartition, BaseException] = {}
        producer = self._producer
        try:
            if producer is None:  # the last one stopped for good and no broker answered its successor
                # With the stop, a SIGTERM while no broker answers ends the bootstrap at once (it waited
                # out kafka-python's 30 s, past `skuforge up`'s grace); nothing is committed then.
                producer = self._producer = make_producer(
                    self.settings, client_id=self._producer_client_id, stop=self._stop
                )
        except (KafkaError, StoppedBootstrapping) as exc:
            # Only the partitions with something to send wait for a producer: the others' inputs are
            # done, and are committed. Before, every partition of the poll was rewound and read again.
            failed = {tp: exc for tp, done in outcomes.items() if any(outcome.outputs for _, outcome in done)}
        if producer is not None:
            # send() waits up to max_block_ms for a topic's metadata: a topic that did not come is not
            # waited for again in this batch, by each partition with an output to it.
            unsendable: dict[str, KafkaError] = {}
            for tp, done in outcomes.items():
                sent = futures.setdefault(tp, [])
                try:
                    for _, outcome in done:
                        for topic_name, key, value in outcome.outputs:
                            if topic_name in unsendable:
                                raise unsendable[topic_name]
                            try:
                                sent.append((topic_name, producer.send(topic_name, key=key, value=value)))
                            except KafkaError as exc:
                                unsendable[topic_name] = exc
                                raise
                except KafkaError as exc:
                    failed[tp] = exc
            deadline = time.monotonic() + self.settings.flush_timeout_s
            try:
                producer.flush(timeout=self.settings.flush_timeout_s)
            except KafkaError as exc:  # the broker is away, or the producer stopped: each send says
                log.debug("flush failed: %s: %s", type(exc).__name__, exc, extra={"stage": self.name})
            for tp, sent in futures.items():
                try:
                    for _, future in sent:
                        # Each send's own result, waited for until the flush's deadline: flush() does not
                        # wait for the halves of a batch the broker refused as too large (kafka-python
                        # splits it and sends them again; its flush returns, or raises "Future not
                        # done"), so outputs that then went failed as unacknowledged, and the partition
                        # backed off and sent them again.
                        future.get(timeout=max(0.0, deadline - time.monotonic()))
                except KafkaError as exc:
                    failed.setdefault(tp, exc)
            if failed and producer_stopped_for_good(producer):
                # Before, the stage kept it: every later batch, of every partition, failed with the
                # first refusal's error until a restart, while /healthz said the stage was fine.
                # Quiet when each partition that failed holds a letter that waits, logged already.
                quiet = all(any(self._quiet_retry(r) for r, _ in outcomes.get(tp, [])) for tp in failed)
                close_stopped_producer(
                    producer, f"stage {self.name}", next(iter(failed.values())), quiet=quiet
                )
                self._producer = None
        # A partition whose outputs a topic refused for good goes again input by input, so that only
        # the input whose output was refused is dead-lettered: the refusal stopped the producer, which
        # failed the other outputs in flight with the same error. Before, the partition backed off at
        # the cap for ever, and nothing after the input moved.
        delivered: dict[TopicPartition, int] = {}  # of a failed partition, its inputs that went
        first_sends: dict[TopicPartition, int] = {}  # and how many of its first sends were theirs
        for tp, error in list(failed.items()):
            if isinstance(error, RECORD_REFUSALS):
                acked = [future.succeeded() for _, future in futures.get(tp, [])]
                sizes = [len(outcome.outputs) for _, outcome in outcomes[tp]]
                delivered[tp], stopped_by = self._deliver_one_by_one(outcomes[tp], acked)
                first_sends[tp] = sum(sizes[: delivered[tp]])
                if stopped_by is None:
                    del failed[tp]
                    continue
                failed[tp] = stopped_by
                if not isinstance(stopped_by, RECORD_REFUSALS):
                    break  # the broker is away: the other partitions back off without a try each
        for tp, error in failed.items():
            went = delivered.get(tp, 0)
            done = outcomes.get(tp, [])
            resume_at = done[went][0].offset if went else batch[tp][0].offset
            stopped_at = done[went][0] if went < len(done) else None
            del done[went:]
            if tp in self._resume_at:
                # Backed off mid-batch at a later record: the outputs of the records before it
                # went with this failed send, so it must restart from its first record too.
                self._consumer.seek(tp, resume_at)
                # The back-off's line was the later record's, but a letter that waits had its retry's
                # lines logged now (unless lately): marked here too, or they came at every retry.
                self._retry_logged(stopped_at)
            else:
                self._back_off(tp, resume_at, error, stopped_at=stopped_at)
        self._forget_delivered(outcomes)
        for tp, sent in futures.items():
            # Of a partition sent again one by one, those of the inputs that went acknowledged the first
            # time (the others are counted as they go). Those of the inputs rewound after them are
            # counted when they are delivered, as a partition rewound whole counts its own: before,
            # they were counted now and again after the rewind.
            if tp in delivered or tp not in failed:
                for topic_name, future in sent[: first_sends.get(tp, len(sent))]:
                    if future.succeeded():
                        self.metrics.produced.labels(self.name, topic_name).inc()
        return not failed

    def _deliver_one_by_one(
        self, done: list[tuple[ConsumerRecord, _Outcome]], acked: list[bool]
    ) -> tuple[int, BaseException | None]:
        """Send the outputs of ``done`` that are not ``acked`` yet (a flag per output, in order) one at a
        time; an input with an output refused for good (``RECORD_REFUSALS``) is dead-lettered in ``done``
        instead. A letter the DLQ topic refuses goes again once with its original in the object store
        (``_send_letter_small``). Returns how many inputs went, and the error that stopped the next one
        (a letter refused even so waits, as for a transient fault: there is nothing to dead-letter it to)."""
        first_output = 0
        for input_index, (record, outcome) in enumerate(done):
            flags = acked[first_output : first_output + len(outcome.outputs)]
            first_output += len(outcome.outputs)
            quiet = self._quiet_retry(record)
            for output_index, (topic_name, key, value) in enumerate(outcome.outputs):
                if output_index < len(flags) and flags[output_index]:
                    continue
                error = self._send_alone(topic_name, key, value, quiet=quiet)
                if error is None:
                    continue
                if not isinstance(error, RECORD_REFUSALS):
                    return input_index, error
                if outcome.dead_reason is not None:
                    sent = self._send_letter_small(record, outcome, error)
                    if isinstance(sent, BaseException):
                        return input_index, sent
                    done[input_index] = (record, sent)
                    break
                letter = self._output_refused(record, topic_name, error)
                if isinstance(letter, _Retry):
                    return input_index, letter.error
                error = self._send_alone(*letter.outputs[0], quiet=quiet)
                if isinstance(error, RECORD_REFUSALS):
                    small = self._send_letter_small(record, letter, error)
                    if isinstance(small, BaseException):
                        return input_index, small
                    letter, error = small, None
                if error is not None:
                    return input_index, error
                done[input_index] = (record, letter)
                break
        return len(done), None

    def _send_letter_small(
        self, record: ConsumerRecord, letter: _Outcome, refusal: KafkaError
    ) -> _Outcome | BaseException:
        """Send ``letter`` (a dead letter the DLQ topic refused for good: ``refusal``) again once, its
        original key and value kept in the object store as an original over 256 KiB is, and its own Kafka
        key (the original's, up to 256 KiB) cut to the key's SHA-256 when longer, so that only the
        letter's own fields (a reason of 200 characters, a detail of 4,000 at most) are left to fit the
        DLQ's ``max.message.bytes``. Returns the letter that went, or the error that stopped it: the
        partition then waits, as for a transient fault, with the original stored, the refusal logged and
        counted once for all its retries. Before, a key alone over the limit held the partition for good,
        storing the original and logging again at every retry."""
        [(dlq_topic, dlq_key, value)] = letter.outputs
        where = _letter_key(record)
        waiting = self._waiting_letters.get(where)
        moved = self._moved_letters.get(where) if waiting is None else None
        kept = waiting.kept if waiting is not None else moved.kept if moved is not None else None
        if kept is None:
            try:
                kept = _KeptOriginal(
                    *self._keep_original(record, "key", record.key, inline_max_bytes=0),
                    *self._keep_original(record, "value", record.value or b"", inline_max_bytes=0),
                )
            except Exception as exc:
                # As in _dead_letter: the store away is a transient fault, which the back-off logs.
                if not isinstance(exc, TransientError):
                    log.error(
                        f"{dlq_topic} refused a dead letter, and its original cannot be kept in the store; "
                        "the partition waits",
                        exc_info=exc,
                        extra={"stage": self.name, "topic": record.topic, "offset": record.offset},
                    )
                return refusal
        small = DeadLetter.model_validate_json(value).model_copy(
            update={
                "original_key_b64": kept.key_b64,
                "original_value_b64": kept.value_b64 or "",
                "original_key_ref": kept.key_ref,
                "original_value_ref": kept.value_ref,
            }
        )
        # The key is in the store: the letter's own key needs only keep one key's letters together.
        small_key = dlq_key if len(dlq_key) <= SMALL_LETTER_KEY_BYTES else _key_digest(record.key or b"")
        known = waiting or moved
        quiet = known is not None and known.quiet(time.monotonic())
        error = self._send_alone(dlq_topic, small_key, small.model_dump_json().encode(), quiet=quiet)
        if isinstance(error, RECORD_REFUSALS) and moved is not None:
            # The same letter, its partition handed back: it waits since it first did, counted and logged
            # then. Before, a rebalance started its dead_letter_waiting_s again from 0.
            self._waiting_letters[where] = self._moved_letters.pop(where)
            self._count_waiting(dlq_topic)
        elif isinstance(error, RECORD_REFUSALS) and waiting is None:
            self._waiting_letters[where] = _WaitingLetter(dlq_topic, kept, since=time.monotonic())
            self.metrics.dlq_refused.labels(self.name, dlq_topic, "waiting").inc()
            self._count_waiting(dlq_topic)
            log.error(
                f"{dlq_topic} refuses a dead letter for good, even with its original kept in the store: "
                "raise the topic's max.message.bytes; the partition waits until it takes the letter "
                "(logged once per letter; skuforge_dlq_refused_total counts them)",
                extra={
                    "stage": self.name,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "error": f"{type(error).__name__}: {error}",
                },
            )
        if error is not None:
            return error
        self.metrics.dlq_refused.labels(self.name, dlq_topic, "sent_small").inc()
        log.warning(
            f"{dlq_topic} refused a dead letter with its original inline; sent with the original kept "
            "in the store instead (raise the topic's max.message.bytes to keep originals inline)",
            extra={"stage": self.name, "topic": record.topic, "offset": record.offset},
        )
        return replace(letter, outputs=[(dlq_topic, small_key, small.model_dump_json().encode())])

    def _waiting_letter(self, record: ConsumerRecord) -> _WaitingLetter | None:
        """The dead letter of ``record`` that waits (``_send_letter_small``), or waited here before its
        partition moved away and back, if one does."""
        if not self._waiting_letters and not self._moved_letters:  # no digest of every record of a batch
            return None
        where = _letter_key(record)
        return self._waiting_letters.get(where) or self._moved_letters.get(where)

    def _quiet_retry(self, record: ConsumerRecord) -> bool:
        """Whether this retry of ``record`` goes unlogged: its dead letter waits, logged lately."""
        waiting = self._waiting_letter(record)
        return waiting is not None and waiting.quiet(time.monotonic())

    def _retry_logged(self, stopped_at: ConsumerRecord | None, now: float | None = None) -> None:
        """A retry of ``stopped_at`` was just logged, if its dead letter waits and was not logged lately
        (``_quiet_retry``): its next retries go at debug for ``WAITING_LETTER_LOG_INTERVAL_S``."""
        waiting = self._waiting_letter(stopped_at) if stopped_at is not None else None
        now = time.monotonic() if now is None else now
        if waiting is not None and not waiting.quiet(now):
            waiting.logged_at = now

    def _forget_delivered(
        self, outcomes: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]]
    ) -> None:
        """Drop the letters that wait at or before the last input delivered of their partition: their
        letter went, or a retry of their input was handled (a handler that failed ``handler_max_attempts``
        times and then did not). Before, only a letter that went was dropped: one whose input was handled
        the next time was counted as waiting until its partition moved, and paged."""
        if not self._waiting_letters and not self._moved_letters:
            return
        delivered_up_to = {
            (tp.topic, tp.partition): done[-1][0].offset for tp, done in outcomes.items() if done
        }
        self._forget_waiting(
            [
                where
                for where in (*self._waiting_letters, *self._moved_letters)
                if where[2] <= delivered_up_to.get(where[:2], -1)
            ]
        )

    def _forget_waiting(self, letters: Sequence[tuple[str, int, int, str, str]]) -> None:
        """Drop these letters (``_letter_key``) from those that wait: they went."""
        for where in letters:
            self._moved_letters.pop(where, None)
            waiting = self._waiting_letters.pop(where, None)
            if waiting is not None:
                self._count_waiting(waiting.dlq_topic)

    def _move_waiting(self, gone: set[tuple[str, int]]) -> None:
        """The letters that wait on these partitions (topic, partition), which moved away: no longer
        counted here (their next holder counts them), remembered in case the group hands them back."""
        for where in [where for where in self._waiting_letters if where[:2] in gone]:
            waiting = self._waiting_letters.pop(where)
            self._count_waiting(waiting.dlq_topic)
            self._moved_letters[where] = waiting
            while len(self._moved_letters) > ATTEMPTS_KEPT:
                self._moved_letters.popitem(last=False)

    def _count_waiting(self, dlq_topic: str) -> None:
        waiting = sum(1 for letter in self._waiting_letters.values() if letter.dlq_topic == dlq_topic)
        self.metrics.dlq_waiting.labels(self.name, dlq_topic).set(waiting)

    def _send_alone(
        self, topic_name: str, key: bytes, value: bytes, *, quiet: bool = False
    ) -> KafkaError | StoppedBootstrapping | None:
        """Send one record and wait for its acknowledgement: None once acknowledged, else the error
        (a producer it stopped for good is closed, logged at debug when ``quiet``; the next send makes a
        new one, given up when the stage stops)."""
        try:
            if self._producer is None:
                self._producer = make_producer(
                    self.settings, client_id=self._producer_client_id, stop=self._stop
                )
            future = self._producer.send(topic_name, key=key, value=value)
            self._producer.flush(timeout=self.settings.flush_timeout_s)
            future.get(timeout=self.settings.flush_timeout_s)
        except KafkaError as exc:
            if self._producer is not None and producer_stopped_for_good(self._producer):
                close_stopped_producer(self._producer, f"stage {self.name}", exc, quiet=quiet)
                self._producer = None
            return exc
        except StoppedBootstrapping as exc:
            return exc
        self.metrics.produced.labels(self.name, topic_name).inc()
        return None

    def _output_refused(
        self, record: ConsumerRecord, topic_name: str, error: KafkaError
    ) -> _Outcome | _Retry:
        """The dead letter of an input whose output to ``topic_name`` the broker refused for good."""
        try:
            header: EnvelopeHeader | None = read_header(record.value)
        except ValidationError:
            header = None
        detail = (
            f"the broker refused its output to {topic_name} for good ({type(error).__name__}: {error}); "
            "a record over the topic's max.message.bytes is refused so: raise it, then replay this letter"
        )
        return self._dead_letter(record, "output_refused", detail, error, header)

    def _commit(self, outcomes: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]]) -> None:
        assert self._consumer is not None
        # Inputs whose commit failed before ride with this one: their offsets are committed again here,
        # and only then counted. Before, a failed commit dropped their counts and after_commit actions
        # for good, though the loop went on past them and a later commit covered their offsets.
        merged: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]] = {}
        for tp in {**self._uncommitted, **outcomes}:
            done = outcomes.get(tp, [])
            earlier = [
                entry
                for entry in self._uncommitted.get(tp, [])
                if not done or entry[0].offset < done[0][0].offset
            ]
            if earlier or done:
                merged[tp] = earlier + done
        offsets = {tp: OffsetAndMetadata(done[-1][0].offset + 1, "", -1) for tp, done in merged.items()}
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except FencedInstanceIdError:
            self._uncommitted = {}  # the partitions' owner now is the other member: it redoes them
            raise self._fenced() from None
        except KafkaError as exc:
            # CommitFailedError: the group rebalanced under us; a partition that moved is revoked at the
            # next poll, and the rebalance listener sends these offsets on then (_commit_revoked).
            # KafkaTimeoutError: the coordinator did not answer within request_timeout_ms (the broker
            # is away); the outputs are durable, so the loop goes on and the next commit covers these
            # offsets (or a restart redelivers them).
            failed = self._commit_failures.due(type(exc).__name__)
            if failed is not None:
                log.warning(
                    "commit failed; the next commit covers these records unless their partition moves "
                    "(logged at most once per %g s per error while commits keep failing)",
                    COMMIT_FAILURE_WARNING_INTERVAL_S,
                    extra={
                        "stage": self.name,
                        "error": f"{type(exc).__name__}: {exc}",
                        "failed_commits_since_last_warning": failed,
                    },
                )
            self._uncommitted = merged
            return
        self._uncommitted = {}
        self._commit_failures.clear()
        self._count_committed(merged)

    def _refused(self, exc: KafkaError) -> ConfigError:
        """The error that ends a member the broker will not let consume: no retry changes a full group or
        a missing ACL, and kafka-python's error ended `skuforge run` in a traceback at every restart."""
        assert self._consumer is not None
        group = self._consumer.config["group_id"]
        if isinstance(exc, GroupMaxSizeReachedError):
            return ConfigError(
                f"consumer group {group} is full: the broker's group.max.size refused this member; "
                "run fewer replicas of this stage, or raise the broker's group.max.size"
            )
        if isinstance(exc, GroupAuthorizationFailedError):
            return ConfigError(
                f"the Kafka broker refused consumer group {group} to this client: grant its user Read "
                "on the group (an ACL), or check SKUFORGE_CONSUMER_GROUP_PREFIX and the SASL settings"
            )
        named = exc.args[0] if exc.args else ()  # kafka-python gives the set of refused topics
        topics = ", ".join([named] if isinstance(named, str) else sorted(map(str, named)))
        return ConfigError(
            f"the Kafka broker refused this client the topics {topics}: grant its user Read on the "
            "stage's input topics (an ACL), or check SKUFORGE_TOPIC_NAMESPACE and the SASL settings"
        )

    def _fenced(self) -> ConfigError:
        """The error that ends a member whose static id (``SKUFORGE_GROUP_INSTANCE_ID``) another member
        joined the group with. The broker hands that one the partitions and fences this one, which
        kafka-python only stops heartbeating: before, it went on handling every input beside their
        owner, failed every commit, and kept each batch's inputs in memory for a commit to come."""
        assert self._consumer is not None
        return ConfigError(
            f"another member joined consumer group {self._consumer.config['group_id']} with "
            f"SKUFORGE_GROUP_INSTANCE_ID={self.settings.group_instance_id} and took this member's "
            "partitions; this one stops: give each replica its own id (the replica index, the pod name)"
        )

    def _count_committed(self, merged: dict[TopicPartition, list[tuple[ConsumerRecord, _Outcome]]]) -> None:
        """Count inputs whose offsets the broker took, mark their events completed, run their actions."""
        for tp, done in merged.items():
            if done:
                self._failures.pop(tp, None)
            for record, outcome in done:
                self._attempts.pop((tp, record.offset), None)
                if outcome.event_id:
                    self._completed[(tp.topic, outcome.event_id)] = None
                self.metrics.messages.labels(self.name, tp.topic, outcome.counted).inc()
                if record.key is None and outcome.counted != REPLAY_FOR_OTHER_STAGE:
                    self.metrics.unkeyed.labels(self.name, tp.topic).inc()
                if outcome.dead_reason is not None:
                    self.metrics.dlq.labels(self.name, tp.topic, outcome.dead_reason).inc()
                for action in outcome.after_commit:
                    self._run_after_commit(action)
        while len(self._completed) > self._dedupe_window:
            self._completed.popitem(last=False)

    def _commit_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Send the offsets a failed commit left for partitions being revoked, before they move on.

        Every batch is committed before the next poll, and the broker takes it while the group prepares
        a rebalance, so only inputs whose commit failed (a coordinator that did not answer in time) are
        left here. Dropped, their partition's next holder handled them all again and sent their outputs
        twice. This runs in the rebalance listener, on kafka-python's I/O thread, which refuses a
        blocking ``commit()``; ``commit_async`` goes out ahead of this member's next JoinGroup, and a
        cooperative rebalance hands a revoked partition on only in that follow-up round. The inputs are
        counted once the broker answers (the callback runs in the loop's next poll, or as the stage
        stops: ``_await_revoked_commits``); if it refuses, the next holder redoes them, as before.
        """
        left = {tp: self._uncommitted[tp] for tp in revoked if self._uncommitted.get(tp)}
        if not left:
            return
        assert self._consumer is not None
        offsets = {tp: OffsetAndMetadata(done[-1][0].offset + 1, "", -1) for tp, done in left.items()}
        token = object()
        self._revoked_commits.add(token)

        def answered(_offsets: object, result: object) -> None:
            self._revoked_commits.discard(token)
            if isinstance(result, BaseException):
                log.warning(
                    "committing revoked partitions failed; their next holder redoes these records",
                    extra={"stage": self.name, "error": f"{type(result).__name__}: {result}"},
                )
                return
            self._count_committed(left)

        try:
            self._consumer.commit_async(offsets, callback=answered)
        except KafkaError as exc:
            answered(offsets, exc)

    def _await_revoked_commits(self) -> None:
        """Wait, as the stage stops, for the broker's answers to the rebalance listener's commits, and
        count the inputs they took (``_commit_revoked``).

        kafka-python 3.0 runs a ``commit_async`` callback only inside a later ``poll()`` or ``commit()``,
        and ``close()`` calls neither (the Java client's close waits for pending async commits). A stage
        stopped in the poll whose rebalance sent them never counted those inputs, nor ran their
        ``after_commit`` actions, though the broker took their offsets and their next holder did not redo
        them. Each answer comes within the consumer's ``request_timeout_ms``.
        """
        if not self._revoked_commits:
            return
        assert self._consumer is not None
        deadline = time.monotonic() + self._consumer.config["request_timeout_ms"] / 1000
        try:
            while True:
                try:
                    _run_answered_commit_callbacks(self._consumer)
                except KafkaError as exc:  # fenced (another member took a static member's id)
                    log.warning("the commits of revoked partitions: %s: %s", type(exc).__name__, exc)
                    return
                if not self._revoked_commits:
                    return
                if time.monotonic() >= deadline:
                    log.warning(
                        "stopping before the broker answered the commit of revoked partitions: inputs it "
                        "took are not counted; those it did not, their next holder redoes",
                        extra={"stage": self.name},
                    )
                    return
                time.sleep(0.05)
        finally:
            self._revoked_commits.clear()  # this consumer's: a run again has its own

    def _commit_left_over(self, *, now: bool = False) -> None:
        """Commit the offsets a failed commit left, when no batch comes to carry them (an idle stage,
        a stop): at most once per ``retry_backoff_initial_s`` unless ``now``. Before, they waited for
        the next input, and an idle stage's committed lag stayed above 0 meanwhile."""
        if not self._uncommitted:
            return
        moment = time.monotonic()
        if not now and moment - self._last_left_over_commit < self.settings.retry_backoff_initial_s:
            return
        self._last_left_over_commit = moment
        self._commit({})

    def _hold_intake(self) -> None:
        """Pause every assigned partition while ``max_uncommitted`` handled inputs wait for a commit,
        and resume them (but those backing off) once a commit took them: ``MAX_UNCOMMITTED_INPUTS``.
        The loop goes on polling, so the member stays in its group, and an empty poll tries the commit
        again (``_commit_left_over``). A paused partition's position is that of its next input, so the
        records kafka-python parked for it meanwhile are fetched again (``_drop_parked_records``)."""
        assert self._consumer is not None
        waiting = sum(len(entries) for entries in self._uncommitted.values())
        self.metrics.uncommitted_inputs.labels(self.name).set(waiting)
        if waiting >= self._max_uncommitted:
            if not self._intake_held:
                log.warning(
                    "commits keep failing: the stage takes no input until one goes through",
                    extra={"stage": self.name, "uncommitted_inputs": waiting},
                )
            self._intake_held = True
            self._consumer.pause(*self._consumer.assignment())  # those assigned since too
            return
        if not self._intake_held:
            return
        self._intake_held = False
        for tp in self._consumer.assignment():
            if tp not in self._resume_at:
                self._consumer.resume(tp)
                _drop_parked_records(self._consumer, tp)
        log.info("a commit went through: the stage takes input again", extra={"stage": self.name})

    def _run_after_commit(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # the input is committed; a failing counter must not stop the stage
            log.exception("an after_commit action failed", extra={"stage": self.name})

    # -- back-off -----------------------------------------------------------------------------

    def _back_off(
        self,
        tp: TopicPartition,
        offset: int,
        error: BaseException,
        *,
        stopped_at: ConsumerRecord | None = None,
    ) -> None:
        """Rewind ``tp`` to ``offset`` and pause it for an exponential, jittered back-off. ``stopped_at``:
        the input whose outputs failed; one whose dead letter waits is logged at most every
        ``WAITING_LETTER_LOG_INTERVAL_S`` (a retry at the cap's pace logged this line for good)."""
        assert self._consumer is not None
        if self._stop.is_set():
            # A handler giving its batch up at the stop (Context.stopping), or a fault as it stops: no
            # retry follows here, so none is counted (it set off retry alerts at every stop); the
            # input stays uncommitted for the next run or the partition's next owner.
            self._consumer.seek(tp, offset)
            log.info(
                "stopping: the rest of the partition's batch is left uncommitted",
                extra={
                    "stage": self.name,
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "offset": offset,
                    "error": f"{type(error).__name__}: {error}",
                },
            )
            return
        failures = self._failures.get(tp, 0) + 1
        self._failures[tp] = failures
        # The exponent stops growing long before the cap matters: 2 ** 1024 is no float, and a partition
        # that failed that often (8.5 h of an S3 refusing the credentials) ended the stage.
        delay = min(
            self.settings.retry_backoff_max_s,
            self.settings.retry_backoff_initial_s * 2 ** min(failures - 1, 64),
        )
        delay *= random.uniform(0.8, 1.2)
        self._consumer.seek(tp, offset)
        self._consumer.pause(tp)
        self._resume_at[tp] = time.monotonic() + delay
        self.metrics.retries.labels(self.name, type(error).__name__).inc()
        self.metrics.messages.labels(self.name, tp.topic, "retry").inc()
        self.metrics.paused_partitions.labels(self.name).set(len(self._resume_at))
        waiting = self._waiting_letter(stopped_at) if stopped_at is not None else None
        now = time.monotonic()
        quiet = waiting is not None and waiting.quiet(now)
        self._retry_logged(stopped_at, now)
        extra: dict[str, Any] = {
            "stage": self.name,
            "topic": tp.topic,
            "partition": tp.partition,
            "offset": offset,
            "retry_in_s": round(delay, 2),
            "error": f"{type(error).__name__}: {error}",
        }
        if waiting is not None:
            extra["dead_letter_waiting_s"] = round(now - waiting.since)
        log.log(logging.DEBUG if quiet else logging.WARNING, "transient fault; partition paused", extra=extra)

    def _resume_due_partitions(self) -> None:
        if not self._resume_at:
            return
        assert self._consumer is not None
        now = time.monotonic()
        due = [tp for tp, at in self._resume_at.items() if at <= now]
        for tp in due:
            del self._resume_at[tp]
            if tp in self._consumer.assignment():
                self._consumer.resume(tp)
                _drop_parked_records(self._consumer, tp)
        self.metrics.paused_partitions.labels(self.name).set(len(self._resume_at))

    def _forget_partitions(self, partitions: Sequence[TopicPartition]) -> None:
        # Not its records' failed attempts: counted on if the partition comes back (_unexpected). Its
        # letters that wait are uncounted (its next holder meets and counts them), and remembered.
        self._move_waiting({(tp.topic, tp.partition) for tp in partitions})
        for tp in partitions:
            if self._resume_at.pop(tp, None) is not None and self._consumer is not None:
                # Paused here, so never resumed here: the records kafka-python parked for it would keep
                # the fetcher off it for good once the group hands it back (_drop_parked_records).
                _drop_parked_records(self._consumer, tp)
            self._failures.pop(tp, None)
            # Sent on by _commit_revoked when revoked; lost (evicted) or at a stop, its next owner
            # redelivers and counts them.
            self._uncommitted.pop(tp, None)
            # A partition that moved to another member is its lag now: a stale sample here would count
            # it twice, and make this member look as if it still held it (skuforge up's ready check).
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(self.name, tp.topic, str(tp.partition))
        self.metrics.paused_partitions.labels(self.name).set(len(self._resume_at))

    def _update_lag(self) -> None:
        now = time.monotonic()
        if self._consumer is None or now - self._last_lag_update < 2.0:
            return
        self._last_lag_update = now
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                self.metrics.consumer_lag.labels(self.name, tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )


class _RebalanceListener(ConsumerRebalanceListener):
    """Counts rebalances, sends the offsets a failed commit left for revoked partitions, and drops
    their back-off state.

    Offsets are committed at the end of every batch, and the listener runs inside poll(), never in the
    middle of one: only the inputs of a commit that failed are left for it (``Stage._commit_revoked``).
    """

    def __init__(self, stage: Stage) -> None:
        self._stage = stage

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # The first join revokes nothing and a clean stop revokes everything; neither is a rebalance.
        if revoked and not self._stage._stop.is_set():
            self._stage.metrics.rebalances.labels(self._stage.name).inc()
        self._stage._commit_revoked(revoked)
        self._stage._forget_partitions(revoked)

    def on_partitions_lost(self, lost: Sequence[TopicPartition]) -> None:
        # Evicted from the group: a commit could only fail, and the partitions' next holder redoes them.
        if lost and not self._stage._stop.is_set():
            self._stage.metrics.rebalances.labels(self._stage.name).inc()
        self._stage._forget_partitions(lost)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._stage._joined = True
        log.info(
            "partitions assigned",
            extra={"stage": self._stage.name, "partitions": [str(tp) for tp in assigned]},
        )


def _drop_parked_records(consumer: KafkaConsumer, tp: TopicPartition) -> None:
    """Work around a kafka-python 3.0 fetcher bug that would stall ``tp`` forever after a pause.

    Records buffered for a paused partition are parked, and restored on resume only while no other
    partition's (even fully drained) records are next in line; until they are restored the fetcher
    never fetches that partition again. We seeked ``tp`` back before pausing, so whatever was parked
    is stale anyway: dropping it lets the fetcher fetch from the seek position.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    if isinstance(parked, dict):
        stale = parked.pop(tp, None)
        if stale is not None and hasattr(stale, "drain"):
            stale.drain()


def _run_answered_commit_callbacks(consumer: KafkaConsumer) -> None:
    """Run the callbacks of the ``commit_async`` calls the broker has answered, on this thread.

    kafka-python 3.0.12 queues them for its next ``poll()`` or ``commit()``
    (``ConsumerCoordinator._invoke_completed_offset_commit_callbacks``); a stopping stage makes neither.
    """
    consumer._coordinator._invoke_completed_offset_commit_callbacks()


def _replay_stage(record: ConsumerRecord) -> str | None:
    """The stage a replayed record is meant for (its ``REPLAY_STAGE_HEADER``), None for any other record."""
    for name, value in record.headers or ():
        if name == REPLAY_STAGE_HEADER:
            return bytes(value or b"").decode("utf-8", errors="replace")
    return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"not valid JSON: {error['msg']}"


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        location = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{location}: {error['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def run_stage(stage: Stage) -> int:
    """Entry point used by each service's ``main()``: logging from settings, then run."""
    configure_logging(stage.settings.log_level, stage.settings.log_format)
    return stage.run()


def loading_registry(name: str) -> CollectorRegistry:
    """What a stage's port serves while its models load (``run_stage_loading``)."""
    registry = CollectorRegistry()
    loading = Gauge(
        "skuforge_stage_loading",
        "1 while the stage opens its models, before it joins its consumer group (its own metrics then)",
        ["stage"],
        registry=registry,
    )
    loading.labels(name).set(1)
    return registry


def run_stage_loading(name: str, default_metrics_port: int, build: Callable[[], Stage]) -> int:
    """``run_stage(build())`` for a stage that opens models first, answering on the stage's metrics
    port meanwhile: /metrics (``skuforge_stage_loading`` 1), /healthz 200 and /readyz 503.

    Before, nothing listened while a captioner copied its VLM from S3: the pod's startup probe
    killed a load longer than five minutes, and Prometheus saw the target down (SkuforgeStageDown
    paged after two). A load that never ends leaves the pod unready (SkuforgePodsUnavailable).
    """
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    registry = loading_registry(name)
    started = time.monotonic()
    health = HealthServer(
        registry,
        host=settings.metrics_host,
        port=settings.metrics_port if settings.metrics_port is not None else default_metrics_port,
        ready=lambda: False,
        stale_after_s=float("inf"),
    ).start()
    try:
        stage = build()
    finally:
        health.stop()  # the stage's own server takes the port in run()
    log.info("stage models opened", extra={"stage": name, "seconds": round(time.monotonic() - started, 1)})
    return stage.run()  # logging is configured above


def stage_command(command: str, main: Callable[[], int]) -> int:
    """A stage's ``main()`` run as the command ``command``: a start-up failure it can name (a setting,
    a model's bucket, a broker that is not there) is one line after ``command:`` on stderr.

    ``skuforge run`` and each stage's ``python -m`` both start here: the module alone ended a missing
    bucket in a traceback that the command said in one line naming the setting."""

    def start() -> int:
        try:
            return main()
        except KafkaUnreachable as exc:  # it says what to do; run_command would add a vaguer second line
            print(f"{command}: {exc}", file=sys.stderr)
            return 1

    return run_command(command, start)
