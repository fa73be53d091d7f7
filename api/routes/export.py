"""Retraining export: reviewed jobs as xlam JSONL (the format the training loaders read)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import StateDep, TenantDep
from api.errors import ApiError
from api.schemas import UtcDatetime, error_responses
from hyfunc.store.errors import is_unavailable
from hyfunc.store.export import export_records

router = APIRouter(prefix="/v1", tags=["export"], responses=error_responses(401, 422, 500, 503))
log = logging.getLogger("hyfunc.api")


class ExportAborted(RuntimeError):
    """Raised out of the response stream so the server drops the connection mid-body."""


@router.get("/export", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}, "description": "one record per line"}})
def export(state: StateDep, tenant: TenantDep, format: Literal["xlam"] = "xlam",
           since: UtcDatetime | None = None, until: UtcDatetime | None = None) -> StreamingResponse:
    """Jobs with feedback, `{"id", "query", "tools", "answers"}` per line; corrected calls win.

    A failure mid-stream ends the body with one `{"error": ...}` line and then drops the
    connection before the final chunk: the client sees an incomplete read, never a
    silently short export."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ApiError(422, f"{name} must carry a timezone, e.g. 2026-01-01T00:00:00Z")
    tenant_id = tenant.id

    def lines() -> Iterator[bytes]:
        # Its own session: the response streams after the request's session is closed.
        sent = 0
        try:
            with state.sessions() as session:
                for record in export_records(session, tenant_id, since=since, until=until):
                    yield (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
                    sent += 1
        except Exception as err:
            # The status line is long gone: say so in a final line, then abort the chunked
            # stream (no terminating chunk), so no client takes a truncated export for whole.
            log.exception("export for tenant %s failed after %d records", tenant_id, sent)
            reason = "store unavailable" if is_unavailable(err) else "internal error"
            yield (json.dumps({"error": f"export failed after {sent} records: {reason}; "
                                        "the export is incomplete"}) + "\n").encode("utf-8")
            raise ExportAborted(f"export aborted after {sent} records") from err

    return StreamingResponse(lines(), media_type="application/x-ndjson")
