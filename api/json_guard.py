"""JSON bodies checked before a route parses them: nesting depth, then values JSON cannot hold.

The depth is read on the raw bytes (brackets outside strings), so a body nested 100,000
deep is refused without ever being parsed (limits.max_json_depth). A body within the
depth limit is then parsed once here and must hold only what JSON can: no NaN or
±Infinity (Python's json reads them, and 1e999 as inf) and no lone UTF-16 surrogates
(they cannot be encoded as UTF-8, so storing or echoing them back would fail later).
Malformed JSON passes through: the route answers it with its own 400.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from api.asgi_reject import send_rejection
from api.asgi_replay import replaying
from hyfunc.schema import find_non_finite

# A JSON string: quote, then runs of ordinary bytes or escapes, then quote (no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{}\n")
_OPEN, _CLOSE, _NEWLINE = frozenset(b"[{"), frozenset(b"]}"), ord("\n")
INLINE_CHECK_BYTES = 64 * 1024  # larger bodies are checked in a worker thread
# What a non-finite number or a lone surrogate needs in the raw text: NaN/Infinity, a
# 3-digit exponent or a 300-digit mantissa (1e999, 1111…1.0), a \uD800-\uDFFF escape,
# or (for an unreadable integer) thousands of digits. A body without any of them skips
# the parse; a match, even inside a string, only means it is parsed and checked.
_SUSPICIOUS = re.compile(rb"NaN|Infinity|[eE][+-]?[0-9]{3}|[0-9]{300}|\\u[dD][89a-fA-F]")


def depth_problem(raw: bytes, max_depth: int, *, lines: bool = False) -> str | None:
    """Whether brackets outside strings nest deeper than max_depth (per line for JSON Lines)."""
    # Strings and everything but brackets go first, in C; the loop then sees brackets only.
    structure = _STRING.sub(b"", raw).translate(None, _NOT_STRUCTURE)
    depth = 0
    line = 1
    for byte in structure:
        if byte in _OPEN:
            depth += 1
            if depth > max_depth:
                where = f"line {line} " if lines else "body "
                return f"{where}nests more than {max_depth} levels deep; limit limits.max_json_depth is {max_depth}"
        elif byte in _CLOSE:
            depth -= 1
        elif byte == _NEWLINE:
            line += 1
            if lines:
                depth = 0
    return None


def _surrogate_path(value: Any) -> str:
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str) and not _encodable(node):
            return where or "<root>"
        if isinstance(node, dict):
            for key, sub in node.items():
                if not _encodable(key):
                    return f"{where} (a key)" if where else "<root> (a key)"
                stack.append((sub, f"{where}.{key}" if where else key))
        elif isinstance(node, list):
            stack.extend((sub, f"{where}[{i}]") for i, sub in enumerate(node))
    return "<unknown>"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def value_problem(value: Any) -> str | None:
    """NaN/±Infinity or a lone surrogate anywhere in a parsed value, naming where."""
    try:
        # One C-speed pass finds both; the slow walks below only run to name the place.
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValueError as err:
        if isinstance(err, UnicodeEncodeError):
            return f"{_surrogate_path(value)}: contains a lone UTF-16 surrogate, which is not valid Unicode"
        return f"{find_non_finite(value) or '<unknown>'}: NaN and Infinity are not JSON numbers"
    return None


def _parse(text: str) -> tuple[Any, str | None] | None:
    """(value, None), (None, problem) for a value JSON cannot hold, or None if malformed."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError:
        return None
    except ValueError:  # an integer with more digits than Python converts (4300)
        return None, "a number has too many digits to read"


def body_problem(raw: bytes, max_depth: int, *, lines: bool = False) -> str | None:
    """What makes a JSON (or JSON Lines) body unacceptable, or None (malformed is the route's call)."""
    problem = depth_problem(raw, max_depth, lines=lines)
    if problem:
        return problem
    if _SUSPICIOUS.search(raw) is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    chunks = [(f"line {n}: ", line) for n, line in enumerate(text.split("\n"), 1) if line.strip()] if lines \
        else [("", text)]
    for prefix, chunk in chunks:
        parsed = _parse(chunk)
        if parsed is None:
            continue
        value, problem = parsed
        problem = problem or value_problem(value)
        if problem:
            return prefix + problem
    return None


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


class JsonBodyGuard:
    """Answer 400 for a body that is not UTF-8, and 422 for one that body_problem refuses,
    before any route reads it.

    JSON (or no) content type: the body is one JSON value. Multipart: left to the route
    (it checks the uploaded file itself). Anything else is read as JSON Lines, as the
    batch route does.
    """

    def __init__(self, app: ASGIApp, max_depth: int):
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type.lower().startswith(("multipart/", "application/x-www-form-urlencoded")):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        # JSON bodies are UTF-8 (RFC 8259); the parser behind the routes sniffs UTF-16/32 and would
        # take them. UTF-16 text of ASCII is valid UTF-8 full of NUL bytes, which JSON never holds
        # raw (not even inside strings), so a NUL byte refuses it too.
        problem = None
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            problem = f"body is not UTF-8 (byte {err.start}); JSON bodies must be UTF-8"
        if problem is None and b"\x00" in body:
            problem = "body is not UTF-8 JSON: it holds NUL bytes (UTF-16 or UTF-32?); JSON bodies must be UTF-8"
        if problem:
            await send_rejection(send, 400, problem)
            return
        lines = not _is_json(content_type)
        if len(body) > INLINE_CHECK_BYTES:
            # Checking megabytes takes a while: off the event loop, so other requests go on.
            problem = await anyio.to_thread.run_sync(lambda: body_problem(body, self.max_depth, lines=lines))
        else:
            problem = body_problem(body, self.max_depth, lines=lines) if body else None
        if problem:
            await send_rejection(send, 422, problem)
            return
        await self.app(scope, replaying(body, receive), send)
