"""One way for ASGI middleware to refuse a request before any route sees it."""

from __future__ import annotations

import json

from starlette.types import Send


async def send_rejection(send: Send, status: int, detail: str) -> None:
    """Answer with `status` and the same `{"detail": ...}` JSON body the routes' own errors use."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
