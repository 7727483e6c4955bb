"""A multipart form's text fields must be text in the form's charset (UTF-8 unless its Content-Type
declares another), or the request is refused with a 422 that names the field.

Starlette reads a text part that does not decode in the form's charset as latin-1, silently (and every
part as latin-1 when the charset is one it does not know): a reject reason sent in another encoding
was stored, in the audit and the trainstore, as text no one sent. The framework offers no way to see
that it fell back, so this middleware reads the same parts as the body streams past, with
python-multipart's parser (the framework's own), keeping no part's bytes, and refuses the form at the
first text part that does not decode. A body the parser cannot read is left to the framework (its 400).
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from fastapi import HTTPException
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


class FormTextInCharset:
    """ASGI middleware: a multipart POST whose text part is not in the form's charset is a 422 naming it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        media_type, options = parse_options_header(Headers(scope=scope).get("content-type"))
        if media_type != b"multipart/form-data" or b"boundary" not in options:
            await self.app(scope, receive, send)
            return
        check = _TextParts(options)

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                check.write(message.get("body", b""))
            return message

        await self.app(scope, checked_receive, send)


class _TextParts:
    """Follows a multipart body chunk by chunk; raises a 422 at the first text part (a part without a
    filename, as the framework tells them) whose bytes do not decode in the form's charset."""

    def __init__(self, options: dict[bytes, bytes]) -> None:
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
        self._parser: MultipartParser | None = MultipartParser(options[b"boundary"], callbacks)
        self._header: tuple[bytes, bytes] = (b"", b"")
        self._disposition = b""
        self._field = ""
        self._decoder: codecs.IncrementalDecoder | None = None  # None: a file part, not checked

    def write(self, chunk: bytes) -> None:
        if self._parser is None or not chunk:
            return
        try:
            self._parser.write(chunk)
        except FormParserError:
            self._parser = None  # malformed: the framework's parser refuses it (400)

    def _part_begin(self) -> None:
        self._header, self._disposition, self._decoder = (b"", b""), b"", None

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
            self._decoder = codecs.getincrementaldecoder(self.charset or "ascii")("strict")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._decode(data[start:end], final=False)

    def _part_end(self) -> None:
        self._decode(b"", final=True)

    def _decode(self, data: bytes, *, final: bool) -> None:
        if self._decoder is None:
            return
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError:
            raise HTTPException(422, self._refusal()) from None

    def _refusal(self) -> str:
        if not self.declared:
            return f"{self._field} is not UTF-8 text: send it as UTF-8"
        known = "" if self.charset else ", a charset this server does not know"
        return f"{self._field} is not {self.declared} text (the form's charset{known}): send it as UTF-8"
