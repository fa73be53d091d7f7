"""Retraining export: reviewed jobs as xlam JSONL (the format the training loaders read)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import StateDep, TenantDep
from api.errors import ApiError
from api.schemas import UtcDatetime, error_responses
from hyfunc.store.export import export_records

router = APIRouter(prefix="/v1", tags=["export"], responses=error_responses(401, 422, 500, 503))


@router.get("/export", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}, "description": "one record per line"}})
def export(state: StateDep, tenant: TenantDep, format: Literal["xlam"] = "xlam",
           since: UtcDatetime | None = None, until: UtcDatetime | None = None) -> StreamingResponse:
    """Jobs with feedback, `{"id", "query", "tools", "answers"}` per line; corrected calls win."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ApiError(422, f"{name} must carry a timezone, e.g. 2026-01-01T00:00:00Z")
    tenant_id = tenant.id

    def lines() -> Iterator[bytes]:
        # Its own session: the response streams after the request's session is closed.
        with state.sessions() as session:
            for record in export_records(session, tenant_id, since=since, until=until):
                yield (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")

    return StreamingResponse(lines(), media_type="application/x-ndjson")
