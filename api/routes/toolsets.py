"""Toolset routes: register a named toolset (a new version on change) and read it back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy.exc import IntegrityError

from api.deps import SessionDep, StateDep, TenantDep
from api.errors import ApiError
from api.schemas import ToolsetIn, ToolsetName, ToolsetOut, ToolsetVersion, error_responses
from hyfunc.schema import RequestError, parse_request
from hyfunc.store.models import Toolset
from hyfunc.store.submissions import (
    compiled_tools_problem,
    nul_problem,
    schema_depth_problem,
    tools_problem,
)
from hyfunc.store.toolsets import get_toolset, put_toolset

router = APIRouter(prefix="/v1/toolsets", tags=["toolsets"], responses=error_responses(401, 422, 500, 503))
MAX_VERSION_RACES = 20  # attempts to add a version while other requests add theirs


def _out(row: Toolset) -> ToolsetOut:
    return ToolsetOut(name=row.name, version=row.version, content_hash=row.content_hash,
                      tools=row.tools, created_at=row.created_at)


@router.post("", status_code=201, response_model=ToolsetOut,
             responses={200: {"model": ToolsetOut, "description": "unchanged: the latest version already has these tools"},
                        **error_responses(400, 409, 413)})
def register_toolset(body: ToolsetIn, response: Response, state: StateDep, session: SessionDep,
                     tenant: TenantDep) -> ToolsetOut:
    problem = (tools_problem(len(body.tools), state.config.limits) or schema_depth_problem(body.tools, state.config.limits)
               or nul_problem(body.tools, "tools"))
    if problem:
        raise ApiError(422, problem)
    try:
        # Same validation as a job's inline tools (names unique, schemas well formed).
        tools = parse_request({"query": "toolset", "tools": body.tools}).tools
    except RequestError as err:
        raise ApiError(422, str(err)) from None
    problem = compiled_tools_problem(tools, state.config.limits)
    if problem:
        raise ApiError(422, problem)
    for _ in range(MAX_VERSION_RACES):
        try:
            row, created = put_toolset(session, tenant.id, body.name, tools)
            session.commit()
            break
        except IntegrityError:
            # Another request took this version number first (unique tenant, name, version):
            # read the new latest and try again.
            session.rollback()
    else:
        raise ApiError(409, f"toolset {body.name!r} kept changing under this request; retry")
    if not created:
        response.status_code = 200
    return _out(row)


@router.get("/{name}", response_model=ToolsetOut, responses=error_responses(404))
def read_toolset(name: Annotated[ToolsetName, Path()], session: SessionDep, tenant: TenantDep,
                 version: Annotated[ToolsetVersion | None, Query(description="default: the latest")] = None
                 ) -> ToolsetOut:
    row = get_toolset(session, tenant.id, name, version)
    if row is None:
        raise ApiError(404, f"toolset {name!r} not found")
    return _out(row)
