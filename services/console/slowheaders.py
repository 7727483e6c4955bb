"""A request whose headers do not all arrive within a deadline is answered 408 and its connection closed.

uvicorn (its h11 protocol) times out a connection only between requests, after an answer
(``timeout_keep_alive``), and a byte of the next request cancels that: a client that opened a connection
and sent nothing, or sent a request's headers a byte every few seconds (slowloris), held its connection
for good, and enough of them held every file descriptor the process has. ``slowbody.py`` covers a body
that stops arriving; it cannot see the headers, since the application is called only once they are read.

Here the headers of each request must arrive within ``timeout_s`` of the wait for them starting: the
connection opening (the first request) or the first byte of a later one (before it, the keep-alive
timeout covers the idle connection). A deadline, not an idle limit: a byte now and then does not renew
it. A connection that sent nothing by then is closed without an answer, as uvicorn closes an idle
keep-alive connection (a browser opens spare ones); one that sent part of a request gets the 408.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadersDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers (``timeout_s``; a subclass from
    ``headers_deadline`` sets it)."""

    timeout_s = 30.0

    _headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_timer = self.loop.call_later(self.timeout_s, self._headers_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        # The next request's first bytes may have come while the answer was still being sent (the
        # application sends its body's last, empty part after an await): they wait here from now on, and
        # the idle keep-alive timeout set just now closed such a connection without an answer.
        super().on_response_complete()
        self._watch_headers()

    def _watch_headers(self) -> None:
        """Start the deadline of a request whose first bytes came; stop it once its headers are read."""
        if not self._awaiting_headers():
            self._stop_headers_timer()  # read (or the connection is done with)
        elif self._headers_timer is None and self.conn.trailing_data[0]:
            # A later request has begun: its headers' deadline starts now, in place of the idle timeout.
            self._unset_keepalive_if_required()
            self._headers_timer = self.loop.call_later(self.timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_headers_timer()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        """Whether the connection is open and the current request's headers have not all come."""
        return not self.transport.is_closing() and self.conn.their_state is h11.IDLE

    def _stop_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_late(self) -> None:
        self._headers_timer = None
        if not self._awaiting_headers():
            return
        received, _ = self.conn.trailing_data
        if not received:
            self.transport.close()  # nothing asked: an idle connection, closed as keep-alive closes one
            return
        message = (
            f"the request headers did not all arrive within {self.timeout_s:g} s; send the request again"
        )
        body = message.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=408, headers=headers)) or b"")
        self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
        self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        self.transport.close()


def headers_deadline(timeout_s: float) -> type[HeadersDeadline]:
    """The protocol class for ``uvicorn.Config(http=...)`` giving each request's headers ``timeout_s``."""
    return type("HeadersDeadline", (HeadersDeadline,), {"timeout_s": timeout_s})
