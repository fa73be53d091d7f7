"""Signed list cursors: the API never trusts a cursor it did not issue to the same tenant.

The store's cursor (base64 of created_at|id) is opaque but not secret; the API appends an
HMAC of it and the tenant id, so a tampered or foreign cursor is refused with a 400
before anything reaches SQL. The key is `api.cursor_secret`, or else derived from
`store.url`: every replica of one deployment reads the same store, so their cursors
agree. A derived key only guards integrity (a cursor holds no secret and is
tenant-scoped either way); set `api.cursor_secret` where that matters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from hyfunc.config import HyFuncConfig

TAG_BYTES = 16
CURSOR_PATTERN = r"^[A-Za-z0-9_.\-]+$"
MAX_CURSOR_CHARS = 512


class BadCursor(ValueError):
    """A cursor this API did not issue (to this tenant)."""


def cursor_key(config: HyFuncConfig) -> bytes:
    secret = config.api.cursor_secret or f"hyfunc-cursor:{config.store.url}"
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _tag(key: bytes, tenant_id: int, raw: str) -> str:
    mac = hmac.new(key, f"{tenant_id}|{raw}".encode(), hashlib.sha256).digest()[:TAG_BYTES]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def sign(key: bytes, tenant_id: int, raw: str) -> str:
    return f"{raw}.{_tag(key, tenant_id, raw)}"


def verify(key: bytes, tenant_id: int, cursor: str) -> str:
    """The store's cursor inside a signed one; BadCursor if it was altered or is foreign."""
    raw, _, tag = cursor.rpartition(".")
    if not raw or not hmac.compare_digest(tag, _tag(key, tenant_id, raw)):
        raise BadCursor("cursor is not one this API returned")
    return raw
