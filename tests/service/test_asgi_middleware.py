"""The request-body middleware on its own (no servers): a body read to be checked reaches the
app whole, and a refusal is one JSON answer with the status and detail."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.json_guard import JsonBodyGuard
from api.limits import BodySizeLimit


def _call(middleware_of, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Run one HTTP request (its body in `chunks`) through a middleware in front of an app that
    echoes what it received; returns the messages sent and what the app's receive calls returned."""
    seen: list[Any] = []

    async def app(scope, receive, send) -> None:
        seen.append(await receive())
        seen.append(await receive())  # after the body: the real channel again
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    incoming.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers}
    asyncio.run(middleware_of(app)(scope, receive, send))
    return sent, seen


def test_a_streamed_body_under_the_size_limit_reaches_the_app_whole() -> None:
    sent, seen = _call(lambda app: BodySizeLimit(app, max_bytes=10), [b"abc", b"defg"], [])
    assert seen == [{"type": "http.request", "body": b"abcdefg", "more_body": False}, {"type": "http.disconnect"}]
    assert sent[0]["status"] == 200


def test_a_streamed_body_over_the_size_limit_is_a_413_naming_the_limit() -> None:
    sent, seen = _call(lambda app: BodySizeLimit(app, max_bytes=5), [b"abc", b"defg"], [])
    assert seen == []
    assert sent[0]["status"] == 413
    body = sent[1]["body"]
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(body)).encode()
    assert json.loads(body) == {"detail": "request body is 7 bytes; limit limits.max_body_bytes is 5"}


def test_the_json_guard_replays_a_good_body_and_refuses_a_deep_one_with_422() -> None:
    headers = [(b"content-type", b"application/json")]
    good = b'{"a": [1, 2]}'
    sent, seen = _call(lambda app: JsonBodyGuard(app, max_depth=4), [good[:5], good[5:]], headers)
    assert seen[0] == {"type": "http.request", "body": good, "more_body": False}
    assert sent[0]["status"] == 200
    sent, seen = _call(lambda app: JsonBodyGuard(app, max_depth=4), [b"[" * 10 + b"]" * 10], headers)
    assert seen == []
    assert sent[0]["status"] == 422
    assert "limits.max_json_depth" in json.loads(sent[1]["body"])["detail"]
