"""A form's text fields must be text: a multipart form's in the form's charset (UTF-8 unless its
Content-Type declares another), a url-encoded form's UTF-8; and each sent once. Otherwise the request
is refused with a 422 that names the field.

Starlette reads a text part that does not decode in the form's charset as latin-1, silently (and every
part as latin-1 when the charset is one it does not know): a reject reason sent in another encoding
was stored, in the audit and the trainstore, as text no one sent. A url-encoded field's percent-escapes
it reads as UTF-8 with U+FFFD in place of bytes that are not, and raw (unescaped) bytes as latin-1: a
login's ``reviewer`` of ``al%E9ce`` was looked up and throttled as someone else, and a reason sent as raw
UTF-8 was stored as "cafÃ©". The framework offers no way to see that it fell back, so this middleware
reads the same fields as the body streams past, with python-multipart's parsers (the framework's own),
and refuses the form at the first text field that does not decode. A body the parser cannot read is
left to the framework (its 400).

A text field sent twice the framework reads as its last copy: a rejection with two ``reject_reason``s
was recorded with the second, and ``reviewer=alice&reviewer=bob`` logged in as bob, the first dropped
without a word. No form of the console sends a field twice, so the second copy is refused. (A second
file is the route's to refuse: the decision's ``mask``.)
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, QuerystringParser, parse_options_header
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks, QuerystringCallbacks


class FormTextInCharset:
    """ASGI middleware: a multipart POST whose text part is not in the form's charset, or a url-encoded
    POST whose field is not UTF-8, is a 422 naming the field."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # The media type as the framework reads it: with the same parser, so the same forms are checked.
        media_type, options = parse_options_header(Headers(scope=scope).get("content-type"))
        check: _FormBody
        if media_type == b"multipart/form-data" and b"boundary" in options:
            check = _TextParts(options)
        elif media_type == b"application/x-www-form-urlencoded":
            check = _UrlencodedFields()
        else:
            await self.app(scope, receive, send)
            return

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                check.write(message.get("body", b""))
                if not message.get("more_body", False):
                    check.finish()
            return message

        await self.app(scope, checked_receive, send)


class _FormBody:
    """A form body followed chunk by chunk through python-multipart's parser (``_parser``), whose
    callbacks check its fields as they pass."""

    _parser: MultipartParser | QuerystringParser | None  # None once the body proved malformed

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def _once(self, field: str) -> None:
        """Refuse the form at the second copy of ``field`` (a text field, as the framework names it)."""
        if field in self._seen:
            raise HTTPException(422, sent_twice(field))
        self._seen.add(field)

    def write(self, chunk: bytes) -> None:
        """Feed the parser the next chunk of the body."""
        if self._parser is None or not chunk:
            return
        try:
            self._parser.write(chunk)
        except FormParserError:
            self._parser = None  # malformed: the framework's parser refuses it (400)

    def finish(self) -> None:
        """The body ended (a multipart body's parts were each checked as they ended)."""


class _TextParts(_FormBody):
    """Follows a multipart body chunk by chunk; raises a 422 at the first text part (a part without a
    filename, as the framework tells them) whose bytes do not decode in the form's charset."""

    def __init__(self, options: dict[bytes, bytes]) -> None:
        super().__init__()
        # As the framework reads the charset: the Content-Type's, else UTF-8.
        self.declared = options.get(b"charset", b"").decode("latin-1")
        try:
            self.charset: str | None = codecs.lookup(self.declared or "utf-8").name
        except LookupError:
            self.charset = None  # the framework reads every part as latin-1: only ASCII reads as sent
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        self._parser = MultipartParser(options[b"boundary"], callbacks)
        self._header: tuple[bytes, bytes] = (b"", b"")
        self._disposition = b""
        self._field = ""
        # A text part's bytes, decoded whole at its end as the framework decodes them (bytes.decode):
        # an incremental decoder raised UnicodeError, not UnicodeDecodeError, for UTF-16 or UTF-32 text
        # without a byte-order mark, which bytes.decode reads: a 500. None: a file part, not checked.
        self._text: bytearray | None = None

    def _part_begin(self) -> None:
        self._header, self._disposition, self._text = (b"", b""), b"", None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0] + data[start:end], self._header[1])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0], self._header[1] + data[start:end])

    def _header_end(self) -> None:
        name, value = self._header
        if name.lower() == b"content-disposition":
            self._disposition = value
        self._header = (b"", b"")

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._field = options.get(b"name", b"").decode(self.charset or "latin-1", "replace")
        if b"filename" not in options:
            self._once(self._field)
            self._text = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._text is not None:
            self._text += data[start:end]  # the body is capped before it gets here (auth.limit_bodies)

    def _part_end(self) -> None:
        if self._text is None:
            return
        try:
            bytes(self._text).decode(self.charset or "ascii")
        except UnicodeError:
            raise HTTPException(422, self._refusal()) from None

    def _refusal(self) -> str:
        if not self.declared:
            return not_utf8(self._field)
        known = "" if self.charset else ", a charset this server does not know"
        return f"{self._field} is not {self.declared} text (the form's charset{known}): send it as UTF-8"


class _UrlencodedFields(_FormBody):
    """Follows a url-encoded body chunk by chunk; raises a 422 at the first field whose name or value,
    percent-decoded, is not UTF-8, or holds a raw byte outside ASCII (which the framework reads as
    latin-1; a browser percent-encodes every such byte). The body is capped before it gets here
    (``auth.limit_bodies``), so a field is decoded whole, as the framework does."""

    def __init__(self) -> None:
        super().__init__()
        callbacks: QuerystringCallbacks = {
            "on_field_start": self._field_start,
            "on_field_name": self._field_name,
            "on_field_data": self._field_data,
            "on_field_end": self._field_end,
        }
        self._parser = QuerystringParser(callbacks)
        self._name = bytearray()
        self._value = bytearray()

    def finish(self) -> None:
        if self._parser is not None:
            self._parser.finalize()

    def _field_start(self) -> None:
        self._name, self._value = bytearray(), bytearray()

    def _field_name(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _field_data(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _field_end(self) -> None:
        name = _utf8(bytes(self._name))
        if name is None:
            # The name as the framework reads it, so the 422 names what the route sees.
            raise HTTPException(422, not_utf8(bytes(self._name).decode("latin-1")))
        if _utf8(bytes(self._value)) is None:
            raise HTTPException(422, not_utf8(name))
        self._once(name)


def _utf8(escaped: bytes) -> str | None:
    """A url-encoded name or value as text, or None where it is not percent-escaped UTF-8."""
    if not escaped.isascii():
        return None
    try:
        return unquote_to_bytes(escaped.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return None


def sent_twice(field: str) -> str:
    """The refusal of a form whose text field came more than once, the same for every form and field."""
    return f"{field}: sent more than once; send it once"


def not_utf8(field: str) -> str:
    """The refusal of a form field whose text is not UTF-8, the same for every form and field."""
    return f"{field} is not UTF-8 text: send it as UTF-8"
