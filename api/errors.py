"""Uniform error bodies and request ids.

Every error is JSON `{"detail": "<message>"}`: malformed JSON is a 400, a value the API
refuses a 422 naming the field and the problem, a store that cannot be reached a 503.
Anything unexpected becomes a JSON 500 `{"detail": "internal error", "request_id": ...}`,
logged with its stack under the same id, which every response carries in `X-Request-ID`.
"""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hyfunc.store.errors import StoreUnavailable, is_unavailable
from hyfunc.store.submissions import SubmissionError, SubmissionTooLarge

log = logging.getLogger("hyfunc.api")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own request id is echoed only if it is short and plain (it lands in logs).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


class ApiError(Exception):
    """An error answered as {"detail": message} with the given status (the API's own;
    store errors carry no HTTP status and are mapped in install_handlers)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = uuid.uuid4().hex
    return rid


class RequestIdMiddleware:
    """Give every request an id (the caller's X-Request-ID if plain, else a new one) and
    send it back in the X-Request-ID response header."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        rid = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        # The same scope dict reaches the catch-all handler, so a 500 reports this id too.
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, rid)
            await send(message)

        await self.app(scope, receive, send_with_id)


def _store_down(err: Exception) -> bool:
    # A pool that cannot hand out a connection is the database being away, too.
    return is_unavailable(err) or isinstance(err, PoolTimeoutError)


def validation_detail(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(SubmissionError)
    async def _submission_error(_: Request, err: SubmissionError) -> JSONResponse:
        status = 413 if isinstance(err, SubmissionTooLarge) else 422
        return JSONResponse({"detail": err.message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = list(err.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            ctx = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {})
            return JSONResponse({"detail": f"malformed JSON: {ctx.get('error', 'cannot parse body')}"}, status_code=400)
        return JSONResponse({"detail": validation_detail(errors)}, status_code=422)

    async def _store_error(request: Request, err: Exception) -> JSONResponse:
        if not _store_down(err):
            raise err  # a bad statement is a bug: the catch-all below answers it as a 500
        rid = request_id(request)
        # The driver's message names hosts and ports: it goes to the log, not the client.
        log.warning("request %s: store unavailable: %s: %s", rid, type(err).__name__, err)
        return JSONResponse({"detail": "store unavailable", "request_id": rid}, status_code=503,
                            headers={REQUEST_ID_HEADER: rid, "Retry-After": "5"})

    for kind in (DBAPIError, PoolTimeoutError, StoreUnavailable):
        app.add_exception_handler(kind, _store_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        # Starlette sends this response, then re-raises so the server logs the crash too.
        rid = request_id(request)
        log.error("request %s: unhandled %s on %s %s", rid, type(err).__name__, request.method, request.url.path,
                  exc_info=err)
        return JSONResponse({"detail": "internal error", "request_id": rid}, status_code=500,
                            headers={REQUEST_ID_HEADER: rid})
