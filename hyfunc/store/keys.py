"""Tenants and API keys. Keys are shown once at creation and stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from hyfunc.store.models import ApiKey, Tenant

KEY_PREFIX = "hf_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> tuple[str, ApiKey]:
    """Create a key for a tenant (creating the tenant if new); returns (plaintext, row)."""
    tenant = get_or_create_tenant(session, tenant_name)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(plaintext), prefix=plaintext[:10])
    session.add(row)
    session.flush()
    return plaintext, row


def authenticate(session: Session, key: str | None) -> Tenant | None:
    """The tenant a key belongs to, or None for a missing, unknown or revoked key."""
    if not key:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return session.get(Tenant, row.tenant_id)
