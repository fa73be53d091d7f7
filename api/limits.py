"""The body-size limit (limits.max_body_bytes), enforced before a route parses anything.

The other limits are checked in hyfunc.store.submissions, shared with every producer."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.asgi_reject import send_rejection
from api.asgi_replay import replaying


def too_large_message(size: int, limit: int) -> str:
    return f"request body is {size} bytes; limit limits.max_body_bytes is {limit}"


class BodySizeLimit:
    """Reject bodies over limits.max_body_bytes before a route parses them (413).

    Content-Length is checked up front; a chunked body is counted as it streams in.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send, int(length))
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        # No length given: buffer up to the limit, then replay the body to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send, size)
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        await self.app(scope, replaying(body, receive), send)

    async def _reject(self, send: Send, size: int) -> None:
        await send_rejection(send, 413, too_large_message(size, self.max_bytes))
