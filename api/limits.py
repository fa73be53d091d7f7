"""Service limits from config.limits. Every violation is a 4xx whose message names the
limit, raised before anything is stored or enqueued."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hyfunc.config import LimitsConfig


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
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send, size: int) -> None:
        body = json.dumps({"detail": too_large_message(size, self.max_bytes)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def query_problem(query: Any, limits: LimitsConfig) -> str | None:
    if isinstance(query, str) and len(query) > limits.max_query_chars:
        return f"query is {len(query)} characters; limit limits.max_query_chars is {limits.max_query_chars}"
    return None


def tools_problem(count: int, limits: LimitsConfig) -> str | None:
    if count > limits.max_tools_per_request:
        return f"{count} tools; limit limits.max_tools_per_request is {limits.max_tools_per_request}"
    return None


def batch_problem(count: int, limits: LimitsConfig) -> str | None:
    if count > limits.max_batch_size:
        return f"batch has {count} jobs; limit limits.max_batch_size is {limits.max_batch_size}"
    return None
