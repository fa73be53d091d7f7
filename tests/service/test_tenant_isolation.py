"""Tenant isolation, route by route: tenant B tries every route of the app on tenant A's
jobs, toolsets, replays, feedback and export. Every attempt is a 404 (or an empty list, or
the same answer as for a name that does not exist), nothing of A's appears anywhere in
B's responses, and nothing of A's changes.

The matrix is keyed by the app's own routes: a new route without a case here fails
test_every_route_has_a_case.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import STOCK, WEATHER, write_config
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from starlette.routing import Route

from hyfunc.schema import Call, CallResult, parse_request
from hyfunc.store.db import session_factory, transaction
from hyfunc.store.keys import create_key
from hyfunc.store.models import Feedback, Job, Replay, Toolset
from hyfunc.store.recording import record_finished_jobs

pytestmark = pytest.mark.service

MARKER = f"secret-of-a-{uuid.uuid4().hex[:8]}"  # in A's queries, names, authors and versions
METRICS_TOKEN = "metrics-token-for-ops"


@dataclass
class World:
    client: TestClient
    app: Any
    sessions: Any
    a: dict[str, str]
    b: dict[str, str]
    tenant_a: int
    tenant_b: int
    a_jobs: list[str] = field(default_factory=list)
    a_replay: str = ""
    a_cursor: str = ""

    def a_state(self) -> tuple[Any, ...]:
        """Everything of A's a request could change: rows, latest toolset versions, feedback."""
        with self.sessions() as s:
            jobs = s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == self.tenant_a))
            toolsets = sorted(s.execute(select(Toolset.name, Toolset.version, Toolset.content_hash)
                                        .where(Toolset.tenant_id == self.tenant_a)).tuples())
            replays = s.scalar(select(func.count()).select_from(Replay).where(Replay.tenant_id == self.tenant_a))
            feedback = s.scalar(select(func.count()).select_from(Feedback).join(Job)
                                .where(Job.tenant_id == self.tenant_a))
        return jobs, toolsets, replays, feedback

    def a_secrets(self) -> list[str]:
        return [MARKER, *self.a_jobs, self.a_replay]


@pytest.fixture(scope="module")
def world(pg_url: str, redis_url: str, queue_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from api.app import create_app

    config, _ = write_config(
        tmp_path_factory.mktemp("tenants") / "config.yaml",
        store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue_name},
        api={"metrics_token": METRICS_TOKEN},
    )
    sessions = session_factory(pg_url)
    with transaction(sessions) as s:
        key_a, row_a = create_key(s, f"tenant-a-{MARKER}")
        key_b, row_b = create_key(s, "tenant-b-isolation")
    app = create_app(config)
    with TestClient(app) as client:
        w = World(client=client, app=app, sessions=sessions, a={"X-API-Key": key_a}, b={"X-API-Key": key_b},
                  tenant_a=row_a.tenant_id, tenant_b=row_b.tenant_id)
        a = w.a
        for tools in ([WEATHER], [WEATHER, STOCK]):  # two versions of a name B will use too
            assert client.post("/v1/toolsets", json={"name": "shared-name", "tools": tools}, headers=a).status_code == 201
        assert client.post("/v1/toolsets", json={"name": "a-only", "tools": [STOCK]}, headers=a).status_code == 201
        queued = client.post("/v1/jobs/batch", json=[
            {"id": f"{MARKER}-1", "query": f"weather {MARKER}", "tools": [WEATHER]},
            {"query": f"price {MARKER}", "toolset": "a-only"},
        ], headers=a)
        assert queued.status_code == 202, queued.text
        pairs = [(parse_request({"query": f"weather in Oslo {MARKER}", "tools": [WEATHER]}),
                  CallResult(calls=[Call(name="get_weather", arguments={"city": MARKER})]))]
        with transaction(sessions) as s:
            finished = [str(i) for i in record_finished_jobs(s, w.tenant_a, pairs, model_versions={"lms": MARKER})]
        r = client.post(f"/v1/jobs/{finished[0]}/feedback", json={"verdict": "correct", "author": MARKER}, headers=a)
        assert r.status_code == 201, r.text
        replay = client.post("/v1/replays", json={"job_ids": finished, "model_version": MARKER}, headers=a)
        assert replay.status_code == 202, replay.text
        w.a_jobs = [*queued.json()["ids"], *finished, *replay.json()["job_ids"]]
        w.a_replay = replay.json()["id"]
        w.a_cursor = client.get("/v1/jobs?limit=1", headers=a).json()["next_cursor"]
        assert w.a_cursor
        # B has a little of its own, so its lists and export are not trivially empty.
        b_job = client.post("/v1/jobs", json={"query": "b's own weather", "tools": [WEATHER]}, headers=w.b).json()["id"]
        pairs_b = [(parse_request({"query": "b reviewed", "tools": [WEATHER]}), CallResult())]
        with transaction(sessions) as s:
            b_done = str(record_finished_jobs(s, w.tenant_b, pairs_b)[0])
        assert client.post(f"/v1/jobs/{b_done}/feedback", json={"verdict": "correct"}, headers=w.b).status_code == 201
        assert b_job
        yield w


def app_routes(app: Any) -> set[str]:
    """"METHOD /path" of every route the app serves, walking included routers (FastAPI keeps
    them nested; app.py includes them without an extra prefix, so each route's path is whole)."""
    found: set[str] = set()
    stack = list(app.routes)
    while stack:
        route = stack.pop()
        nested = getattr(route, "original_router", None)
        if nested is not None:
            stack.extend(nested.routes)
        elif isinstance(route, Route):
            found.update(f"{m} {route.path}" for m in route.methods or () if m != "HEAD")
    return found


def not_found_like_missing(w: World, path_for: Callable[[str], str], method: str = "GET",
                           **kwargs: Any) -> list[httpx.Response]:
    """A's object and one that never existed get the same status and (id aside) message."""
    responses = []
    missing = str(uuid.uuid4())
    for target in [*w.a_jobs, w.a_replay]:
        got = w.client.request(method, path_for(target), headers=w.b, **kwargs)
        never = w.client.request(method, path_for(missing), headers=w.b, **kwargs)
        assert got.status_code == never.status_code == 404, (got.text, never.text)
        assert got.json()["detail"].replace(target, "X") == never.json()["detail"].replace(missing, "X")
        responses += [got, never]
    return responses


def case_create_job(w: World) -> list[httpx.Response]:
    out = []
    for ref in ("a-only", "a-only@1", "shared-name@2"):
        got = w.client.post("/v1/jobs", json={"query": "q", "toolset": ref}, headers=w.b)
        never = w.client.post("/v1/jobs", json={"query": "q", "toolset": ref.replace("a-only", "never-made")
                                                .replace("shared-name", "never-made")}, headers=w.b)
        assert got.status_code == never.status_code == 422 and "not registered" in got.json()["detail"], got.text
        out += [got, never]
    return out


def case_create_batch(w: World) -> list[httpx.Response]:
    r = w.client.post("/v1/jobs/batch", json=[{"query": "q", "toolset": "a-only"}], headers=w.b)
    assert r.status_code == 422 and "not registered" in r.json()["detail"], r.text
    return [r]


def case_list_jobs(w: World) -> list[httpx.Response]:
    c, out = w.client, []
    for params in ({"limit": 1000}, {"limit": 1000, "status": "succeeded"}, {"limit": 1000, "status": "queued"},
                   {"limit": 1000, "since": "2000-01-01T00:00:00Z"}):
        r = c.get("/v1/jobs", params=params, headers=w.b)
        assert r.status_code == 200 and r.json()["jobs"], r.text  # B's own jobs only
        assert not {j["id"] for j in r.json()["jobs"]} & set(w.a_jobs)
        out.append(r)
    for name in ("a-only", "shared-name"):
        r = c.get("/v1/jobs", params={"toolset": name}, headers=w.b)
        assert r.status_code == 200 and r.json()["jobs"] == [], r.text
        out.append(r)
    # A's cursor is signed for A: B cannot page with it.
    r = c.get("/v1/jobs", params={"cursor": w.a_cursor}, headers=w.b)
    assert r.status_code == 400, r.text
    return [*out, r]


def case_read_job(w: World) -> list[httpx.Response]:
    return not_found_like_missing(w, lambda i: f"/v1/jobs/{i}")


def case_feedback(w: World) -> list[httpx.Response]:
    return not_found_like_missing(w, lambda i: f"/v1/jobs/{i}/feedback", "POST",
                                  json={"verdict": "incorrect", "author": "b"})


def case_register_toolset(w: World) -> list[httpx.Response]:
    r = w.client.post("/v1/toolsets", json={"name": "shared-name", "tools": [STOCK]}, headers=w.b)
    assert r.status_code in (200, 201) and r.json()["version"] == 1, r.text  # B's own first version
    mine = w.client.get("/v1/toolsets/shared-name", headers=w.b).json()
    assert [t["function"]["name"] for t in mine["tools"]] == ["get_stock_price"]
    return [r]


def case_read_toolset(w: World) -> list[httpx.Response]:
    out = []
    for path in ("/v1/toolsets/a-only", "/v1/toolsets/a-only?version=1", "/v1/toolsets/shared-name?version=2"):
        r = w.client.get(path, headers=w.b)
        assert r.status_code == 404, (path, r.text)
        out.append(r)
    return out


def case_start_replay(w: World) -> list[httpx.Response]:
    r = w.client.post("/v1/replays", json={"job_ids": w.a_jobs}, headers=w.b)
    assert r.status_code == 422 and "selects no jobs" in r.json()["detail"], r.text
    for body in ({"filter": {}}, {"filter": {"toolset": "a-only"}}, {"filter": {"status": "succeeded"}}):
        got = w.client.post("/v1/replays", json=body, headers=w.b)
        if got.status_code == 202:
            assert not set(got.json()["job_ids"]) & set(w.a_jobs)
            with w.sessions() as s:
                originals = set(s.scalars(select(Job.replay_of).where(Job.id.in_(
                    [uuid.UUID(i) for i in got.json()["job_ids"]]))))
            assert not {str(o) for o in originals} & set(w.a_jobs)
        else:
            assert got.status_code == 422 and "selects no jobs" in got.json()["detail"], got.text
        if body["filter"].get("toolset") == "a-only":
            assert got.status_code == 422, got.text
    return [r, got]


def case_read_replay(w: World) -> list[httpx.Response]:
    r = w.client.get(f"/v1/replays/{w.a_replay}", headers=w.b)
    assert r.status_code == 404, r.text
    return [r]


def case_export(w: World) -> list[httpx.Response]:
    r = w.client.get("/v1/export", headers=w.b)
    assert r.status_code == 200 and r.text.strip(), r.text  # B's own reviewed job
    return [r]


def case_healthz(w: World) -> list[httpx.Response]:
    return [w.client.get("/healthz", headers=w.b)]


def case_metrics(w: World) -> list[httpx.Response]:
    # Every tenant's counts: an API key is not enough, only the operators' token.
    out = []
    for headers in (w.b, {"Authorization": f"Bearer {w.b['X-API-Key']}"}, {}):
        r = w.client.get("/metrics", headers=headers)
        assert r.status_code == 401, r.text
        out.append(r)
    assert w.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    return out


def case_public_docs(path: str) -> Callable[[World], list[httpx.Response]]:
    def run(w: World) -> list[httpx.Response]:
        r = w.client.get(path, headers=w.b)
        assert r.status_code == 200, r.text
        return [r]

    return run


CASES: dict[str, Callable[[World], list[httpx.Response]]] = {
    "POST /v1/jobs": case_create_job,
    "POST /v1/jobs/batch": case_create_batch,
    "GET /v1/jobs": case_list_jobs,
    "GET /v1/jobs/{job_id}": case_read_job,
    "POST /v1/jobs/{job_id}/feedback": case_feedback,
    "POST /v1/toolsets": case_register_toolset,
    "GET /v1/toolsets/{name}": case_read_toolset,
    "POST /v1/replays": case_start_replay,
    "GET /v1/replays/{replay_id}": case_read_replay,
    "GET /v1/export": case_export,
    "GET /healthz": case_healthz,
    "GET /livez": case_public_docs("/livez"),
    "GET /metrics": case_metrics,
    "GET /openapi.json": case_public_docs("/openapi.json"),
    "GET /docs": case_public_docs("/docs"),
    "GET /docs/oauth2-redirect": case_public_docs("/docs/oauth2-redirect"),
    "GET /redoc": case_public_docs("/redoc"),
}


def test_every_route_has_a_case(world: World) -> None:
    routes = app_routes(world.app)
    assert routes - set(CASES) == set(), "routes without a tenant-isolation case"
    assert set(CASES) - routes == set(), "cases for routes the app no longer has"


@pytest.mark.parametrize("route", sorted(CASES))
def test_tenant_b_cannot_reach_tenant_a(world: World, route: str) -> None:
    before = world.a_state()
    responses = CASES[route](world)
    assert responses
    for r in responses:
        sent = str(r.request.url) + r.request.content.decode("utf-8", "replace")
        # An id B sent may be echoed back ("job … not found"); nothing else of A's may appear.
        for secret in (s for s in world.a_secrets() if s not in sent):
            assert secret not in r.text, (route, r.request.url, secret)
    assert world.a_state() == before
    # A still sees its own: the 404s above are isolation, not loss.
    assert world.client.get(f"/v1/jobs/{world.a_jobs[0]}", headers=world.a).status_code == 200
