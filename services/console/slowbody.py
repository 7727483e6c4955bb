"""A request body whose bytes stop arriving is answered 408 and its connection closed.

uvicorn times out only an idle connection between requests (``timeout_keep_alive``): a client that
sent a request's headers and part of the body they declared, then nothing, held its connection and
the request's task for good, and enough of them held every file descriptor the process has. Here each
read of a body waits at most ``idle_s`` for its next bytes; a body that keeps arriving, however
slowly, is read whole (a mask upload on a slow link), so the limit is on silence, not on the upload.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyStalled(HTTPException):
    """No bytes of the request body came within the idle limit. An HTTPException: the framework
    answers any other failure to read a form "400 There was an error parsing the body"."""

    def __init__(self, idle_s: float) -> None:
        super().__init__(
            408,
            f"the request body stopped arriving (nothing for {idle_s:g} s); send it again",
            # uvicorn closes the connection after an answer that says so: the rest of the body may come.
            headers={"Connection": "close"},
        )


class BodyIdleTimeout:
    """ASGI middleware: a read of the request body that gets no bytes for ``idle_s`` raises
    ``BodyStalled`` in the route reading it (a 408; nothing the request asked is done). Added inside
    the "http" middlewares: raised through their task groups it reached the route in an
    ExceptionGroup, which the framework answered 400."""

    def __init__(self, app: ASGIApp, idle_s: float) -> None:
        self.app = app
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                # After the body, a read waits for the client to go (a streamed answer): no limit.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError:
                raise BodyStalled(self.idle_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
