"""Value types shared by every event: object references and SKU metadata."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

SKU_ID_MAX_LEN = 64
# Far above what a store writes (a file store's root as long as a Linux path, 4,096 bytes, and a key at
# most 1,024 bytes, S3's limit): unbounded, a 100 kB uri was taken and looked up in the store.
MAX_URI_CHARS = 8192
# RFC 6838 allows 127 characters on each side of the slash; skuforge writes image/png.
MAX_MEDIA_TYPE_CHARS = 255
# Letters, digits and a few separators that are safe in object keys, file names and Kafka keys.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_safe_id(value: str) -> str:
    """Refuse ids that could escape a path or an object-store prefix.

    Ids become path segments (``images/<sku_id>/...``), so path separators, ``..``,
    control characters and over-long ids are refused with a reason, never repaired.
    """
    if not value:
        raise ValueError("id is empty")
    if len(value) > SKU_ID_MAX_LEN:
        raise ValueError(f"id is {len(value)} characters long; at most {SKU_ID_MAX_LEN} are allowed")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("id contains control characters")
    if "/" in value or "\\" in value:
        raise ValueError("id contains a path separator")
    if ".." in value:
        raise ValueError("id contains '..'")
    if not _SAFE_ID.fullmatch(value):
        raise ValueError(
            "id may contain only letters, digits, '.', '_' and '-', and must start with a letter or digit"
        )
    return value


SafeId = Annotated[
    str,
    AfterValidator(check_safe_id),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": SKU_ID_MAX_LEN,
            # check_safe_id's rule as one pattern: a producer validating against the JSON Schema
            # accepted "a..b", which the consumer then dead-lettered as schema_invalid. No lookahead:
            # RE2-based validators (Go, Rust) refuse one.
            "pattern": r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$",
            "description": "safe id: letters, digits, '.', '_', '-'; no '..'",
        }
    ),
]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


# Unicode's control characters (category Cc): C0 (NUL, tab, newline, ESC...), DEL and C1. One
# character class that Python, ECMA-262 and RE2 read alike, for the committed JSON Schemas.
_CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
_CONTROL_CHARACTER = re.compile(f"[{_CONTROL_CHARACTERS}]")


def check_plain_text(value: str) -> str:
    """Refuse text holding a control character; the character is named (``U+001B``), never echoed.

    A retailer's text goes into captions, prompts, tags, log lines and the console's pages: a NUL, a
    terminal escape or a newline there corrupts or forges them. A tab is refused too: it is no part
    of a product's name, and a space says the same.
    """
    found = _CONTROL_CHARACTER.search(value)
    if found:
        raise ValueError(
            f"contains a control character (U+{ord(found.group()):04X} at character {found.start() + 1}); "
            "write it without newlines, tabs or escape codes"
        )
    return value


# Free text from outside (SkuMetadata's fields): any characters but control characters.
PlainText = Annotated[
    str,
    AfterValidator(check_plain_text),
    Field(json_schema_extra={"pattern": f"^[^{_CONTROL_CHARACTERS}]*$"}),
]


def naive_as_utc(value: datetime) -> datetime:
    """Read a time without an offset as UTC, the only zone skuforge writes; aware times are kept as given.

    Refusing one would tighten the contract (a breaking change, docs/delivery.md "Versioning") and
    dead-letter events already accepted; kept naive, it was forwarded as a time the JSON Schema's
    ``date-time`` refuses, and it cannot be compared with an aware one.
    """
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Every time an event carries: written with an offset (JSON Schema ``date-time``), read naive as UTC.
UtcDatetime = Annotated[datetime, AfterValidator(naive_as_utc)]


class Contract(BaseModel):
    """Base of every contract model: instances are immutable; building one with an unknown field is an error.

    Producers are strict: what they build is what ``schemas/json/`` describes. Readers are tolerant:
    events from Kafka are validated by ``shared.bus.read_envelope``, which ignores fields a newer
    producer added (docs/delivery.md, "Versioning").
    """

    # No NaN or infinity in any float: JSON has no such number (the committed schemas cannot carry
    # one), and pydantic writes one as null, so a forwarded event silently lost the value.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ObjectRef(Contract):
    """A claim check: where an object lives and how to verify it when read."""

    uri: str = Field(max_length=MAX_URI_CHARS, description="file:// or s3:// URI of the object")
    sha256: Sha256Hex = Field(description="hex sha256 of the stored bytes, checked on read")
    bytes: int = Field(ge=0, description="size of the stored object in bytes")


class ImageRef(ObjectRef):
    """An image in the object store, with its pixel dimensions."""

    width: int = Field(gt=0, description="width in pixels")
    height: int = Field(gt=0, description="height in pixels")
    media_type: str = Field(
        default="image/png", max_length=MAX_MEDIA_TYPE_CHARS, description="MIME type of the stored bytes"
    )


class SkuMetadata(Contract):
    """What the retailer tells us about a product."""

    sku_id: SafeId
    name: PlainText = Field(min_length=1, max_length=200)
    category: PlainText = Field(
        min_length=1, max_length=100, description="class noun source, e.g. 'soda can'"
    )
    brand: PlainText = Field(default="", max_length=100)
    series: PlainText = Field(
        default="", max_length=100, description="product series; picks the Specialized LoRA"
    )
