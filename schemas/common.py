"""Value types shared by every event: object references and SKU metadata."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)

SKU_ID_MAX_LEN = 64
# Far above what a store writes (a file store's root as long as a Linux path, 4,096 bytes, and a key at
# most 1,024 bytes, S3's limit): unbounded, a 100 kB uri was taken and looked up in the store.
MAX_URI_CHARS = 8192
# RFC 6838 allows 127 characters on each side of the slash; skuforge writes image/png.
MAX_MEDIA_TYPE_CHARS = 255
# Letters, digits and a few separators that are safe in object keys, file names and Kafka keys. A
# trailing '.' stays (ingest refuses one in a new sku_id): events and stores hold ids an ingest before
# that wrote, and refused here they would no longer read (docs/delivery.md, "Versioning").
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAFE_ID_CHAR = re.compile(r"[A-Za-z0-9._-]")


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
        # The character is named, and "letters" said to be ASCII: "ÄPFEL-1" was told that ids may hold
        # only letters, which Ä is.
        refused = next(
            ((index, char) for index, char in enumerate(value, 1) if not _SAFE_ID_CHAR.fullmatch(char)), None
        )
        if refused is None:
            raise ValueError(
                f"id starts with {value[0]!r}: it must start with a letter or digit (A-Z, a-z, 0-9)"
            )
        index, char = refused
        raise ValueError(
            f"id contains {char!r} (character {index}), which is not allowed: it may contain only the "
            "letters A-Z and a-z, digits, '.', '_' and '-', and must start with a letter or digit"
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
# The bidirectional embeddings and overrides (U+202A-U+202E) and isolates (U+2066-U+2069): in a product
# name on the console's pages they reorder the text after them, so it reads as something else (Trojan
# Source, CVE-2021-42574). The characters themselves, not escapes: RE2 reads no "\u" (the committed
# schemas carry them as JSON's "\u202a"). The marks (U+200E, U+200F) and the zero-width characters are
# text: ZWJ and ZWNJ (U+200D, U+200C) join emoji and shape Indic scripts; ZWSP breaks Thai and Khmer words.
BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"
_REFUSED_CHARACTERS = _CONTROL_CHARACTERS + BIDI_CONTROLS
_PLAIN = f"[^{_REFUSED_CHARACTERS}]"
_CONTROL_CHARACTER = re.compile(f"[{_CONTROL_CHARACTERS}]")
BIDI_CONTROL = re.compile(f"[{BIDI_CONTROLS}]")
# The line and paragraph separators, which end a line for some readers (a log shipper, a browser's
# text area); refused where text is one line (a reject reason).
_LINE_SEPARATORS = "\u2028\u2029"
_LINE_SEPARATOR = re.compile(f"[{_LINE_SEPARATORS}]")
# What shows nothing and is not refused: what str.isspace() takes that is no control character (the
# spaces of category Zs, the line and paragraph separators) and the format characters (Cf) of the BMP
# (Unicode 14, Python 3.11's; a test holds it to the running Python's), as the characters themselves. Not
# those beyond the BMP: ECMA-262 without its "u" flag reads one as two UTF-16 halves, and a class holding
# those refused every character beyond the BMP that shares its first half.
INVISIBLE_CHARACTERS = (
    " \u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u1680\u180e\u2000-\u200f"
    "\u2028\u2029\u202f\u205f-\u2064\u206a-\u206f\u3000\ufeff\ufff9-\ufffb"
)


def escaped_within(value: str, limit: int, escaped: re.Pattern[str]) -> str:
    """``value`` with each character ``escaped`` matches written as its escape (``\\u202e``, ``\\x1b``),
    cut to at most ``limit`` characters between two characters: an escape is several characters for one
    (``\\u202e`` six), so text within a limit may escape past it, and cut after the escaping, it ended
    in half an escape (``\\x1`` of ``\\x1b``)."""
    kept: list[str] = []
    length = 0
    for char in value:
        shown = char.encode("unicode_escape").decode("ascii") if escaped.fullmatch(char) else char
        length += len(shown)
        if length > limit:
            break
        kept.append(shown)
    return "".join(kept)


def letter_start(text: str, end: int) -> int:
    """``end``, or where ``text[end]`` is a combining mark (Unicode's M: an accent typed after its letter,
    "e" and U+0301 for "é"), the start of the letter it belongs to: a cut there kept the letter without
    its marks and showed another one ("cafe" of "café")."""
    while 0 < end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end -= 1
    return end


# The validation context a reader of a topic passes (``shared.bus.read_envelope``): a field may then take,
# escaped, text an earlier skuforge producer wrote into the topic that the contract refuses since.
READ_FROM_TOPIC = {"read_from_topic": True}


def read_from_topic(info: ValidationInfo) -> bool:
    """Whether this validation reads an event from a topic (``READ_FROM_TOPIC``), not a producer's build."""
    return isinstance(info.context, dict) and info.context.get("read_from_topic") is True


# The validation context of a store's records of events taken from a topic (the console's task table, the
# LoRA trainer's series requests): as ``READ_FROM_TOPIC``, and an object's ``uri`` the contract refuses
# since (review 48) read as stored, so a record stored before still reads (a task shown escaped, a SKU's
# photos trained on). Only there: the console checks a task's URIs before a decision would embed them in
# an event (``services.console.tasks.unsendable``), and the trainer sends none; a reader of a topic
# dead-letters such a URI.
READ_FROM_STORE = {**READ_FROM_TOPIC, "read_from_store": True}


def read_from_store(info: ValidationInfo) -> bool:
    """Whether this validation reads an event a store's record holds (``READ_FROM_STORE``)."""
    return isinstance(info.context, dict) and info.context.get("read_from_store") is True


# What ``check_one_line`` refuses: escaped by default (``escaped_when_read``), and by a producer that makes
# one line of text a store held from before the contract refused it (the trainer's training prompts).
NOT_ONE_LINE = re.compile(f"[{_REFUSED_CHARACTERS}{_LINE_SEPARATORS}]")
# What ``check_plain_text`` refuses: for ``escaped_when_read`` on a field of plain text (PlainText).
NOT_PLAIN = re.compile(f"[{_REFUSED_CHARACTERS}]")


def printable_ascii(text: str) -> bool:
    """Whether ``text`` is printable ASCII only (U+0020-U+007E), so holds none of the characters the rules
    here refuse or escape: most text is, and these two checks in C let it skip the regular expressions'
    scans (a manifest row's caption, read per row, took about 2 µs longer with them)."""
    return text.isascii() and text.isprintable()


# Every printable ASCII character, to tell whether a pattern of ``escaped_when_read`` may match one.
_PRINTABLE_ASCII = [chr(code) for code in range(0x20, 0x7F)]


def escaped_when_read(limit: int, escaped: re.Pattern[str] = NOT_ONE_LINE) -> BeforeValidator:
    """A field's validator that, under ``READ_FROM_TOPIC``, takes text holding characters ``escaped``
    matches (by default what ``check_one_line`` refuses) with each written as its escape (``\\u202e``,
    ``\\n``), cut between two escapes to ``limit``: an event written before the field refused them, in a
    topic, a dead letter or the console's tasks, still reads (shown as its pages show it), where it was
    dead-lettered, and a replay again. A producer's build (no context) is refused, naming the character;
    text over ``limit`` is refused."""

    # Printable ASCII text holds nothing to escape, unless the pattern matches a printable character.
    skips_ascii = not any(escaped.fullmatch(char) for char in _PRINTABLE_ASCII)

    def escape(value: object, info: ValidationInfo) -> object:
        if (
            isinstance(value, str)
            and len(value) <= limit
            and not (skips_ascii and printable_ascii(value))
            and read_from_topic(info)
            and escaped.search(value)
        ):
            return escaped_within(value, limit, escaped)
        return value

    return BeforeValidator(escape)


def check_plain_text(value: str) -> str:
    """Refuse text holding a control character or a bidirectional control; the character is named
    (``U+001B``), never echoed.

    A retailer's text goes into captions, prompts, tags, log lines and the console's pages: a NUL, a
    terminal escape or a newline there corrupts or forges them, and a bidirectional override makes it
    read as other text. A tab is refused too: it is no part of a product's name, and a space says the
    same.
    """
    if printable_ascii(value):
        return value
    found = _CONTROL_CHARACTER.search(value)
    if found:
        raise ValueError(
            f"contains a control character (U+{ord(found.group()):04X} at character {found.start() + 1}); "
            "write it without newlines, tabs or escape codes"
        )
    found = BIDI_CONTROL.search(value)
    if found:
        raise ValueError(
            f"contains a bidirectional control character (U+{ord(found.group()):04X} at character "
            f"{found.start() + 1}), which reorders the text shown after it; write it without one"
        )
    return value


def text_check(rule: Any) -> Callable[[str], str]:
    """A check of text against ``rule``, an event field's type (``schemas.events.ModelId``): the text
    back, or ``ValueError`` in the rule's own words (naming a character, not echoing it), without
    pydantic's "Value error, " prefix. For text that goes into such a field from outside an event: a
    setting (``shared.config.model_id_setting``) or a command's option (``shared.argtypes.contract_text``)."""
    adapter: TypeAdapter[str] = TypeAdapter(rule)

    def check(text: str) -> str:
        try:
            return adapter.validate_python(text)
        except ValidationError as exc:
            error = exc.errors()[0]
            cause = error.get("ctx", {}).get("error")  # a rule's own ValueError says it best
            raise ValueError(str(cause) if cause is not None else error["msg"]) from None

    return check


def check_one_line(value: str) -> str:
    """Plain text (``check_plain_text``) on one line: the Unicode line and paragraph separators
    (U+2028, U+2029) are refused too, naming the code point. The rule the console holds a reviewer's
    reject reason to: a reason is one line in the audit trail and on the item page."""
    if printable_ascii(value):
        return value
    check_plain_text(value)
    found = _LINE_SEPARATOR.search(value)
    if found:
        raise ValueError(
            f"contains a line separator (U+{ord(found.group()):04X} at character {found.start() + 1}); "
            "write it on one line"
        )
    return value


def shows_nothing(text: str) -> bool:
    """Whether ``text`` is only whitespace and invisible format characters (a zero-width space, a
    byte-order mark, a word joiner: Unicode's Cf), as a spreadsheet's "empty" cell can be: str.strip
    keeps those."""
    return all(char.isspace() or unicodedata.category(char) == "Cf" for char in text)


def check_not_blank(value: str, info: ValidationInfo) -> str:
    """Refuse a name that shows nothing: it names no product, and captions and prompts were made of it."""
    if value and shows_nothing(value):
        raise ValueError(f"is only whitespace or invisible characters; give the product's {info.field_name}")
    return value


# Free text from outside (SkuMetadata's fields): any characters but control characters and the
# bidirectional controls.
PlainText = Annotated[
    str,
    AfterValidator(check_plain_text),
    Field(json_schema_extra={"pattern": f"^{_PLAIN}*$"}),
]
# Free text for people on one line (a reviewer's reject reason): plain text without a line separator.
_ONE_LINE_PATTERN = f"^[^{_REFUSED_CHARACTERS}{_LINE_SEPARATORS}]*$"
OneLineText = Annotated[
    str, AfterValidator(check_one_line), Field(json_schema_extra={"pattern": _ONE_LINE_PATTERN})
]


def check_uri_text(value: str, info: ValidationInfo) -> str:
    """An object's URI on one line (``check_one_line``); read as stored under ``READ_FROM_STORE``."""
    return value if read_from_store(info) else check_one_line(value)


# An object's URI: one line, as OneLineText (and the same committed pattern), except in records stored
# before that rule (``READ_FROM_STORE``). Never escaped: escaped, it would name another object.
UriText = Annotated[
    str, AfterValidator(check_uri_text), Field(json_schema_extra={"pattern": _ONE_LINE_PATTERN})
]
# A name (a SKU's name and category): plain text with a character that shows (not only spaces and
# invisible format characters).
PlainName = Annotated[
    str,
    AfterValidator(check_plain_text),
    AfterValidator(check_not_blank),
    # What shows nothing, then one character that shows, then any: a linear match (no backtracking).
    Field(
        json_schema_extra={
            "pattern": f"^[{INVISIBLE_CHARACTERS}]*[^{_REFUSED_CHARACTERS}{INVISIBLE_CHARACTERS}]{_PLAIN}*$"
        }
    ),
]


@dataclass(frozen=True)
class Chars:
    """A text type's length in characters, as ``Annotated[OneLineText, Chars(200)]``: checked on the text
    itself, before the type's character rule, refused as "String should have at most 200 characters" (and
    ``maxLength`` in the committed schemas). A ``Field(max_length=...)`` after the rule (inside
    ``Annotated``, or on ``X | None``) is pydantic's generic length check, which a check's code, a flagged
    item's reason and a reject reason were refused with: "Value should have at most 200 items after
    validation", read in a dead letter's detail as a list's."""

    max_length: int
    min_length: int = 0

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        # The validators' schemas are copied down to the text's: the type's own schema (OneLineText without
        # a length, elsewhere) is left as it was.
        schema: dict[str, Any] = dict(handler(source))
        text = schema
        while text["type"] in ("function-after", "function-before", "function-wrap"):
            text["schema"] = dict(text["schema"])
            text = text["schema"]
        if text["type"] != "str":
            raise TypeError(f"Chars bounds text; {source} is validated as {text['type']}")
        text["max_length"] = self.max_length
        if self.min_length:
            text["min_length"] = self.min_length
        return schema


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

    # One line that reads as written (a space stays: a FileStore's URIs hold its root's path as it is). It
    # took any text, and a newline or a U+202E in it went on to log lines and the console's pages. Never
    # read escaped, as a model id is: escaped, it would name another object. A record stored before
    # this rule (a console task, a LoRA series request) reads it as stored (``READ_FROM_STORE``); the
    # console sends no decision embedding it.
    uri: Annotated[UriText, Chars(MAX_URI_CHARS)] = Field(description="file:// or s3:// URI of the object")
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
    name: PlainName = Field(min_length=1, max_length=200)
    category: PlainName = Field(
        min_length=1, max_length=100, description="class noun source, e.g. 'soda can'"
    )
    brand: PlainText = Field(default="", max_length=100)
    series: PlainText = Field(
        default="", max_length=100, description="product series; picks the Specialized LoRA"
    )
