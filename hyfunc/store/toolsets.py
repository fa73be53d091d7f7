"""Named, versioned toolsets: POSTing new content under a name makes a new version."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hyfunc.schema import Tool
from hyfunc.store.models import Toolset


def toolset_hash(tools: list[Tool]) -> str:
    # Order-insensitive: the same tools listed differently are the same toolset.
    digest = hashlib.sha256(json.dumps(sorted(t.content_hash() for t in tools)).encode())
    return digest.hexdigest()


def put_toolset(session: Session, tenant_id: int, name: str, tools: list[Tool]) -> tuple[Toolset, bool]:
    """Store tools under name; returns (toolset, created). Unchanged content keeps the version."""
    content_hash = toolset_hash(tools)
    latest = get_toolset(session, tenant_id, name)
    if latest is not None and latest.content_hash == content_hash:
        return latest, False
    row = Toolset(
        tenant_id=tenant_id,
        name=name,
        version=(latest.version + 1) if latest else 1,
        tools=[t.to_json() for t in tools],
        content_hash=content_hash,
    )
    session.add(row)
    session.flush()
    return row, True


def get_toolset(session: Session, tenant_id: int, name: str, version: int | None = None) -> Toolset | None:
    """A tenant's toolset by name: the given version, or the latest."""
    query = select(Toolset).where(Toolset.tenant_id == tenant_id, Toolset.name == name)
    if version is None:
        newest = (
            select(func.max(Toolset.version))
            .where(Toolset.tenant_id == tenant_id, Toolset.name == name)
            .scalar_subquery()
        )
        query = query.where(Toolset.version == newest)
    else:
        query = query.where(Toolset.version == version)
    return session.scalar(query)


def parse_toolset_ref(ref: str) -> tuple[str, int | None]:
    """'name' or 'name@3' -> (name, version)."""
    name, sep, version = ref.rpartition("@")
    if sep and version.isdigit():
        return name, int(version)
    return ref, None
