"""The envelope every Kafka message is wrapped in, and the dead-letter record."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, Field

from schemas.common import Contract, ObjectRef, SafeId, UtcDatetime

P = TypeVar("P", bound=BaseModel)

# Both go into every log line of the event (``key=value`` in the text format): a control character or a
# space let a producer forge lines or fields, and an unbounded ``producer`` bloated every one.
LogToken = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[!-~]+$")]


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

    schema_name: str
    schema_version: int


class EnvelopeHeader(Contract):
    """The envelope without its payload: enough to tell which schema and version an event claims.

    A reader that cannot validate an event's payload still reads its header, so a newer
    ``schema_version`` is refused as such (``schema_version_unsupported``), not as a broken event.
    """

    event_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="deterministic id, see derive_id")
    schema_name: str = Field(description="payload schema name, e.g. 'sku.ingested'")
    schema_version: int = Field(ge=1)
    sku_id: SafeId = Field(description="also the Kafka key, so one SKU's events stay ordered")
    trace_id: LogToken = Field(description="follows the SKU end to end; printable ASCII, no spaces")
    produced_at: UtcDatetime = Field(description="with an offset; a naive time is read as UTC")
    producer: LogToken = Field(description="stage that produced the event; printable ASCII, no spaces")


class Envelope(EnvelopeHeader, Generic[P]):
    """Common wrapper of every event; ``payload`` is the topic's model."""

    payload: P


class DeadLetter(Contract):
    """What a stage could not process, with why; written to ``<topic>.dlq``.

    Not enveloped: the original may not even be JSON, so its bytes travel base64-encoded.
    """

    reason: str = Field(description="short machine-readable code, e.g. schema_invalid, object_missing")
    detail: str = Field(default="", description="human-readable explanation")
    error_class: str
    stage: str
    original_topic: str
    original_partition: int
    original_offset: int
    original_key_b64: str | None = None
    original_value_b64: str
    original_key_ref: ObjectRef | None = Field(
        default=None,
        description="the original key in the object store, when too large to carry here (then no key_b64)",
    )
    original_value_ref: ObjectRef | None = Field(
        default=None,
        description="the original value in the object store, when too large to carry here (value_b64 empty)",
    )
    event_id: str | None = Field(default=None, description="the original's event_id, when it could be read")
    sku_id: SafeId | None = None
    trace_id: str | None = None
    failed_at: UtcDatetime = Field(description="with an offset; a naive time is read as UTC")
