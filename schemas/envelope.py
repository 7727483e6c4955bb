"""The envelope every Kafka message is wrapped in, and the dead-letter record."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, Field

from schemas.common import Contract, ObjectRef, SafeId, UtcDatetime, letter_start
from schemas.topics import KAFKA_TOPIC_NAME_MAX_LEN

P = TypeVar("P", bound=BaseModel)

# Both go into every log line of the event (``key=value`` in the text format): a control character or a
# space let a producer forge lines or fields, and an unbounded ``producer`` bloated every one.
LogToken = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[!-~]+$")]
# A topic's name is ``<schema_name>.v<version>``, which Kafka caps: no topic carries a longer schema name.
MAX_SCHEMA_NAME_CHARS = KAFKA_TOPIC_NAME_MAX_LEN


def derive_id(*parts: str) -> str:
    """A deterministic 32-hex id from its parts: the same input always yields the same id.

    Output ids are derived from the input event id and the output's position, so a
    redelivered message overwrites its earlier outputs instead of duplicating them.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:32]


def utc_now() -> datetime:
    """Timezone-aware current time; envelopes never carry naive datetimes."""
    return datetime.now(UTC)


class SchemaClaim(Contract):
    """Which schema and version an event says it is, and nothing else of its envelope.

    A breaking change of the envelope's own fields is a ``.v2`` of every topic: a v1 reader may not read
    such an event's header at all, but still reads its claim, and refuses it as a version it does not know.
    """

    schema_name: str = Field(max_length=MAX_SCHEMA_NAME_CHARS)
    schema_version: int


class EnvelopeHeader(Contract):
    """The envelope without its payload: enough to tell which schema and version an event claims.

    A reader that cannot validate an event's payload still reads its header, so a newer
    ``schema_version`` is refused as such (``schema_version_unsupported``), not as a broken event.
    """

    event_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="deterministic id, see derive_id")
    schema_name: str = Field(
        max_length=MAX_SCHEMA_NAME_CHARS, description="payload schema name, e.g. 'sku.ingested'"
    )
    schema_version: int = Field(ge=1)
    sku_id: SafeId = Field(description="also the Kafka key, so one SKU's events stay ordered")
    trace_id: LogToken = Field(description="follows the SKU end to end; printable ASCII, no spaces")
    produced_at: UtcDatetime = Field(description="with an offset; a naive time is read as UTC")
    producer: LogToken = Field(description="stage that produced the event; printable ASCII, no spaces")


class Envelope(EnvelopeHeader, Generic[P]):
    """Common wrapper of every event; ``payload`` is the topic's model."""

    payload: P


# A dead letter must fit in one Kafka record (the producer's max_request_size, 1 MiB by default): an
# original key or value larger than this is kept in the object store and the letter points at it, so
# neither base64 copy is longer than DLQ_INLINE_MAX_B64_CHARS. Both at most, with the letter's own key
# (the original's, up to this size), come to about 0.96 MB.
DLQ_INLINE_MAX_BYTES = 256 * 1024
DLQ_INLINE_MAX_B64_CHARS = 4 * -(-DLQ_INLINE_MAX_BYTES // 3)
# The letter's own text is bounded too: a reason or detail of any length made a letter Kafka refused,
# and its partition stalled at every retry. The runtime cuts a longer one to fit, with a visible mark
# (``clipped``); the bounds are far above what it writes (a detail was cut at 2,000 characters before).
MAX_DEAD_LETTER_REASON_CHARS = 200
MAX_DEAD_LETTER_DETAIL_CHARS = 4000
MAX_ERROR_CLASS_CHARS = 200
MAX_STAGE_NAME_CHARS = 200


# ``clipped``'s smallest limit: room for its mark ("... [N more characters cut]") and some text before it.
MIN_CLIPPED_CHARS = 64


def clipped(text: str, limit: int, *, at_word: bool = False) -> str:
    """``text``, or when longer than ``limit`` (at least 64) its start and a mark saying how many
    characters were cut, ``limit`` at most in all: a dead letter is written whatever its reason's
    length. ``at_word``: cut before the word the limit falls in (within the second half of what is
    kept), not inside it, nor inside an escape such as ``\\x1b``: a message for a person."""
    if limit < MIN_CLIPPED_CHARS:
        # Below the mark's length the slice counted from the end: a limit of 0 gave 60 characters.
        raise ValueError(f"a text clipped to {limit} characters: the limit is {MIN_CLIPPED_CHARS} or more")
    cut = len(text) - limit
    if cut <= 0:
        return text
    while True:  # the count's digits change the mark's length: a few times round, the cut only grows
        mark = f"... [{cut} more characters cut]"
        kept = limit - len(mark)
        if at_word:
            kept = _word_start(text, kept)
        kept = letter_start(text, kept)  # nor between a letter and its accent
        if len(text) - kept == cut:
            return text[:kept] + mark
        cut = len(text) - kept


def _word_start(text: str, end: int) -> int:
    """``end``, or where the spaces end before the word ``end`` falls in when that leaves half of
    ``text[:end]`` or more (one long word is cut where it is)."""
    # Any whitespace ends a word, a newline as a space: found only where ``end`` touched it, the cut went
    # back and forth for ever between two words (``clipped``'s count moved ``end`` across a newline).
    start = end
    if not text[end].isspace():
        while start > 0 and not text[start - 1].isspace():
            start -= 1
    while start > 0 and text[start - 1].isspace():
        start -= 1
    return start if start >= end // 2 else end


class DeadLetter(Contract):
    """What a stage could not process, with why; written to ``<topic>.dlq``.

    Not enveloped: the original may not even be JSON, so its bytes travel base64-encoded, or, over
    ``DLQ_INLINE_MAX_BYTES``, in the object store (``original_key_ref``, ``original_value_ref``).
    """

    reason: str = Field(
        max_length=MAX_DEAD_LETTER_REASON_CHARS,
        description="short machine-readable code, e.g. schema_invalid, object_missing",
    )
    detail: str = Field(
        default="", max_length=MAX_DEAD_LETTER_DETAIL_CHARS, description="human-readable explanation"
    )
    error_class: str = Field(max_length=MAX_ERROR_CLASS_CHARS)
    stage: str = Field(max_length=MAX_STAGE_NAME_CHARS)
    original_topic: str = Field(max_length=KAFKA_TOPIC_NAME_MAX_LEN)
    original_partition: int
    original_offset: int
    original_key_b64: str | None = Field(default=None, max_length=DLQ_INLINE_MAX_B64_CHARS)
    original_value_b64: str = Field(max_length=DLQ_INLINE_MAX_B64_CHARS)
    original_key_ref: ObjectRef | None = Field(
        default=None,
        description="the original key in the object store, when too large to carry here (then no key_b64)",
    )
    original_value_ref: ObjectRef | None = Field(
        default=None,
        description="the original value in the object store, when too large to carry here (value_b64 empty)",
    )
    # Lengths only: a letter another writer put in the DLQ is still listed, its text escaped (shared/dlq.py).
    event_id: str | None = Field(
        default=None, max_length=64, description="the original's event_id, when it could be read"
    )
    sku_id: SafeId | None = None
    trace_id: str | None = Field(default=None, max_length=64)
    failed_at: UtcDatetime = Field(description="with an offset; a naive time is read as UTC")
