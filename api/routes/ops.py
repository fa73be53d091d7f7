"""Operations: liveness, health (database, broker, live workers) and Prometheus metrics.

/livez answers 200 whenever the process serves requests (a container healthcheck).

/healthz never echoes a driver's error (it would carry hosts, ports, user names): a
dependency is "ok" or "unreachable". It answers 503 when the database or the broker is
unreachable, or when no worker has sent a heartbeat recently (jobs would only queue up).
/metrics answers only `Authorization: Bearer <api.metrics_token>` when that is set, and
only on its own port (api/metrics.py: create_metrics_app) when api.metrics_port is set.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import StateDep
from api.errors import ApiError
from api.metrics import METRICS_OFF, token_ok
from hyfunc.store.workers import live_workers

router = APIRouter(tags=["ops"])
log = logging.getLogger("hyfunc.api")


def _health(state: Any) -> tuple[dict[str, Any], bool]:
    wc = state.config.worker
    body: dict[str, Any] = {}
    workers: list[dict[str, Any]] = []
    try:
        with state.sessions() as session:
            live = live_workers(session, stale_after_seconds=wc.heartbeat_interval * wc.heartbeat_misses)
        workers = [{"name": w.name, "last_heartbeat": w.last_heartbeat.isoformat(), "started_at": w.started_at.isoformat()}
                   for w in live]
        body["database"] = "ok"
    except Exception as err:  # noqa: BLE001 - reported, not raised, and never its text
        log.warning("healthz: database unreachable: %s", type(err).__name__)
        body["database"] = "unreachable"
    try:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        body["broker"] = "ok"
    except Exception as err:  # noqa: BLE001
        log.warning("healthz: broker unreachable: %s", type(err).__name__)
        body["broker"] = "unreachable"
    # The same shape either way: "alive" is null (unknown) while the database cannot say.
    body["workers"] = {"alive": len(workers) if body["database"] == "ok" else None, "list": workers}
    ok = body["database"] == "ok" and body["broker"] == "ok" and bool(workers)
    return {"status": "ok" if ok else "unavailable", **body}, ok


@router.get("/livez")
async def livez() -> JSONResponse:
    """Liveness: this process answers. It reads no database, broker or worker state, so a
    container healthcheck on it marks a hung API unhealthy, never one whose dependencies are
    down or that has no worker yet (that is /healthz's answer; restarting the API fixes neither)."""
    return JSONResponse({"status": "ok"})


@router.head("/livez", include_in_schema=False)
async def livez_head() -> Response:
    return Response(status_code=200)


@router.get("/healthz", responses={503: {"description": "database or broker unreachable, or no live worker"}})
async def healthz(state: StateDep) -> JSONResponse:
    body, ok = await run_in_threadpool(_health, state)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.head("/healthz", include_in_schema=False)
async def healthz_head(state: StateDep) -> Response:
    """HEAD /healthz: the status code of GET, no body (load balancers probe with HEAD)."""
    _, ok = await run_in_threadpool(_health, state)
    return Response(status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response,
            responses={401: {"description": "api.metrics_token is set and the bearer token is missing or wrong"},
                       403: {"description": "no api.metrics_token is set and api.metrics_open is false"},
                       404: {"description": "api.metrics_port is set: metrics are served on that port only"}})
async def metrics(state: StateDep,
                  authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> Response:
    if state.config.api.metrics_port is not None:
        raise ApiError(404, "metrics are served on api.metrics_port, not on the API's port")
    if not state.config.api.metrics_token and not state.config.api.metrics_open:
        raise ApiError(403, METRICS_OFF)
    if not token_ok(state.config.api.metrics_token, authorization):
        raise ApiError(401, "metrics need `Authorization: Bearer <api.metrics_token>`")
    data = await run_in_threadpool(generate_latest, state.metrics_registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
