"""The hostile requests of issue 11, each of which used to answer 500: now every one is a
4xx naming the field and the problem, and nothing is stored or enqueued. Also the
catch-all: an unexpected exception is a JSON 500 with a request id, a lost database a 503."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import WEATHER, queue_length, write_config
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from hyfunc.schema import Call, CallResult, parse_request
from hyfunc.store.db import session_factory, transaction
from hyfunc.store.keys import create_key
from hyfunc.store.models import Feedback, Job, Replay, Toolset
from hyfunc.store.recording import record_finished_jobs

pytestmark = pytest.mark.service

LIMITS = {"max_json_depth": 32, "max_schema_depth": 6, "max_body_bytes": 1_500_000}
DEEP = 100_000


@pytest.fixture(scope="module")
def env(pg_url: str, redis_url: str, queue_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from api.app import create_app

    config, _ = write_config(
        tmp_path_factory.mktemp("hostile") / "config.yaml",
        store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue_name},
        limits=LIMITS,
    )
    sessions = session_factory(pg_url)
    with transaction(sessions) as s:
        key, row = create_key(s, "tenant-hostile")
    tenant = row.tenant_id
    app = create_app(config)
    with TestClient(app) as client:
        h = {"X-API-Key": key}
        assert client.post("/v1/toolsets", json={"name": "weather", "tools": [WEATHER]}, headers=h).status_code == 201
        pairs = [(parse_request({"query": "weather in Oslo", "tools": [WEATHER]}),
                  CallResult(calls=[Call(name="get_weather", arguments={"city": "Oslo"})]))]
        with transaction(sessions) as s:
            finished = str(record_finished_jobs(s, tenant, pairs, model_versions={"lms": "v0"})[0])
        yield {"client": client, "app": app, "h": h, "tenant": tenant, "sessions": sessions, "job": finished,
               "redis": redis_url, "queue": queue_name}


def stored(env: dict[str, Any]) -> tuple[int, ...]:
    """Row counts of everything a request could write, plus the broker queue's length."""
    with env["sessions"]() as s:
        counts = tuple(
            s.scalar(select(func.count()).select_from(model).where(model.tenant_id == env["tenant"]))
            for model in (Job, Toolset, Replay)
        )
        feedback = s.scalar(select(func.count()).select_from(Feedback).join(Job).where(Job.tenant_id == env["tenant"]))
    return (*counts, feedback, queue_length(env["redis"], env["queue"]))


def job(**fields: Any) -> dict[str, Any]:
    return {"query": "weather in Paris", "tools": [WEATHER], **fields}


def tool_with(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": prop}}}}


def nested_array_tool(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return tool_with(schema)


def raw(text: str, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"content-type": content_type}}


NAN_DEFAULT = '{"query": "q", "tools": [{"name": "f", "parameters": {"type": "object", "properties": ' \
              '{"x": {"type": "number", "default": NaN}}}}]}'
INF_ENUM = '{"query": "q", "tools": [{"name": "f", "parameters": {"type": "object", "properties": ' \
           '{"x": {"type": "number", "enum": [1, 1e999]}}}}]}'
NEG_INF = '{"query": "q", "tools": [{"name": "f", "parameters": {"type": "object", "properties": ' \
          '{"x": {"type": "number", "default": -Infinity}}}}]}'
DEEP_ARRAY = "[" * DEEP + "]" * DEEP
CASES: list[tuple[str, str, str, dict[str, Any], int, list[str]]] = [
    # (name, method, path, request kwargs, status, words the detail must contain)
    ("huge toolset version in a job", "POST", "/v1/jobs", {"json": {"query": "q", "toolset": "weather@99999999999999999999"}},
     422, ["toolset"]),
    ("huge toolset version in a batch", "POST", "/v1/jobs/batch",
     {"json": [{"query": "q", "toolset": "weather@99999999999999999999"}]}, 422, ["jobs[0]", "toolset version"]),
    ("huge ?version=", "GET", "/v1/toolsets/weather?version=99999999999999999999", {}, 422, ["version"]),
    ("NUL in a client id", "POST", "/v1/jobs", {"json": job(id="a\x00b")}, 422, ["id", "NUL"]),
    ("NUL in a batch client id", "POST", "/v1/jobs/batch", {"json": [job(id="a\x00b")]}, 422, ["jobs[0]", "NUL"]),
    ("control character in a client id", "POST", "/v1/jobs/batch", {"json": [job(id="a\x1bb")]}, 422, ["U+001B"]),
    ("NUL in a query", "POST", "/v1/jobs", {"json": job(query="weather\x00")}, 422, ["query", "NUL"]),
    ("NUL in a feedback author", "POST", "/v1/jobs/{job}/feedback", {"json": {"verdict": "correct", "author": "x\x00"}},
     422, ["author", "NUL"]),
    ("NUL in ?toolset=", "GET", "/v1/jobs?toolset=we%00ather", {}, 422, ["toolset"]),
    ("NUL in a toolset name (path)", "GET", "/v1/toolsets/we%00ather", {}, 422, ["name"]),
    ("NUL in a toolset name (body)", "POST", "/v1/toolsets", {"json": {"name": "we\x00ather", "tools": [WEATHER]}},
     422, ["name"]),
    ("NUL in a job's toolset", "POST", "/v1/jobs", {"json": {"query": "q", "toolset": "we\x00ather"}}, 422, ["toolset"]),
    ("NUL in a replay filter's toolset", "POST", "/v1/replays", {"json": {"filter": {"toolset": "a\x00"}}},
     422, ["toolset"]),
    ("300-character client id in a batch", "POST", "/v1/jobs/batch", {"json": [job(id="x" * 300)]},
     422, ["jobs[0]", "300 characters"]),
    ("300-item list as a client id", "POST", "/v1/jobs/batch", {"json": [job(id=["x"] * 300)]},
     422, ["jobs[0]", "id must be a string"]),
    ("object as a client id", "POST", "/v1/jobs/batch", {"json": [job(id={"a": 1})]}, 422, ["id must be a string"]),
    ("300-character model version", "POST", "/v1/replays", {"json": {"job_ids": ["{job}"], "model_version": "v" * 300}},
     422, ["model_version"]),
    ("tampered cursor", "GET", "/v1/jobs?cursor={tampered}", {}, 400, ["cursor"]),
    ("cursor with a foreign signature", "GET", "/v1/jobs?cursor=MjAyNi0wMS0wMQ.AAAAAAAAAAAAAAAAAAAAAA", {}, 400,
     ["cursor"]),
    ("since before year 1 in UTC", "GET", "/v1/jobs?since=0001-01-01T00:00:00%2B01:00", {}, 422, ["since", "out of range"]),
    ("since after year 9999 in UTC", "GET", "/v1/jobs?since=9999-12-31T23:59:59-01:00", {}, 422, ["since", "out of range"]),
    ("naive since", "GET", "/v1/jobs?since=2026-01-01T00:00:00", {}, 422, ["since", "must include a timezone"]),
    ("replay filter since before year 1", "POST", "/v1/replays",
     {"json": {"filter": {"since": "0001-01-01T00:00:00+01:00"}}}, 422, ["filter.since", "out of range"]),
    ("replay filter with a naive since", "POST", "/v1/replays", {"json": {"filter": {"since": "2026-01-01T00:00:00"}}},
     422, ["filter.since", "must include a timezone"]),
    ("export until before year 1", "GET", "/v1/export?until=0001-01-01T00:00:00%2B01:00", {}, 422, ["until"]),
    ("NaN default in a job's tool", "POST", "/v1/jobs", raw(NAN_DEFAULT), 422, ["default", "NaN"]),
    ("1e999 enum value in a job's tool", "POST", "/v1/jobs", raw(INF_ENUM), 422, ["enum[1]", "Infinity"]),
    ("-Infinity in a toolset", "POST", "/v1/toolsets",
     raw('{"name": "inf", "tools": [{"name": "f", "parameters": {"type": "object", "properties": '
         '{"x": {"type": "number", "default": -Infinity}}}}]}'), 422, ["default", "Infinity"]),
    ("NaN in a batch (JSON)", "POST", "/v1/jobs/batch", raw(f"[{NAN_DEFAULT}]"), 422, ["[0]", "NaN"]),
    ("Infinity in a batch (JSONL)", "POST", "/v1/jobs/batch", raw('{"query": "ok", "tools": []}\n' + NEG_INF + "\n",
                                                              "application/x-ndjson"),
     422, ["line 2", "Infinity"]),
    ("NaN in feedback arguments", "POST", "/v1/jobs/{job}/feedback",
     raw('{"verdict": "incorrect", "calls": [{"name": "get_weather", "arguments": {"city": NaN}}]}'), 422, ["NaN"]),
    ("lone surrogate in a query", "POST", "/v1/jobs", raw('{"query": "a\\ud800", "tools": []}'), 422, ["surrogate"]),
    ("integer of 5000 digits", "POST", "/v1/jobs", raw('{"query": "q", "tools": [], "id": ' + "9" * 5000 + "}"),
     422, ["number"]),
    ("array nested 100,000 deep (JSON batch)", "POST", "/v1/jobs/batch", raw(DEEP_ARRAY), 422,
     ["limits.max_json_depth"]),
    ("array nested 100,000 deep (JSONL batch)", "POST", "/v1/jobs/batch", raw(DEEP_ARRAY + "\n", "application/x-ndjson"),
     422, ["line 1", "limits.max_json_depth"]),
    ("array nested 100,000 deep (JSONL upload)", "POST", "/v1/jobs/batch",
     {"files": {"file": ("jobs.jsonl", DEEP_ARRAY + "\n", "application/x-ndjson")}}, 422,
     ["file", "limits.max_json_depth"]),
    ("object nested 100,000 deep (single job)", "POST", "/v1/jobs", raw('{"a":' * DEEP + "1" + "}" * DEEP), 422,
     ["limits.max_json_depth"]),
    ("schema nested past limits.max_schema_depth (job)", "POST", "/v1/jobs", {"json": job(tools=[nested_array_tool(8)])},
     422, ["tools[0]", "limits.max_schema_depth"]),
    ("schema nested past limits.max_schema_depth (toolset)", "POST", "/v1/toolsets",
     {"json": {"name": "deep", "tools": [nested_array_tool(8)]}}, 422, ["limits.max_schema_depth"]),
]


def tampered_cursor(env: dict[str, Any]) -> str:
    c, h = env["client"], env["h"]
    c.post("/v1/jobs/batch", json=[job(), job()], headers=h)
    cursor = c.get("/v1/jobs?limit=1", headers=h).json()["next_cursor"]
    assert cursor
    raw_part, _, tag = cursor.rpartition(".")
    # Flip one character of the store's part: the tag no longer matches.
    flipped = raw_part[:-1] + ("A" if raw_part[-1] != "A" else "B")
    return f"{flipped}.{tag}"


@pytest.mark.parametrize("name,method,path,send,status,words", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_is_a_4xx_and_stores_nothing(env: dict[str, Any], name: str, method: str, path: str,
                                                      send: dict[str, Any], status: int, words: list[str]) -> None:
    c = env["client"]
    if "{tampered}" in path:
        path = path.replace("{tampered}", tampered_cursor(env))
    path = path.replace("{job}", env["job"])
    send = json.loads(json.dumps(send).replace("{job}", env["job"])) if "json" in send else dict(send)
    before = stored(env)
    r = c.request(method, path, headers={**env["h"], **send.pop("headers", {})}, **send)
    assert r.status_code == status, (r.status_code, r.text[:500])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and all(w in detail for w in words), detail
    assert r.headers.get("x-request-id")
    assert stored(env) == before


def test_the_limits_leave_ordinary_requests_alone(env: dict[str, Any]) -> None:
    """The guard must not refuse what is fine: strings holding brackets or 'NaN', deep-but-allowed
    schemas, surrogate pairs, U+2028 inside a JSONL string, integer client ids in JSONL."""
    c, h = env["client"], env["h"]
    before = stored(env)
    text = '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ "[[[[\\" \\ NaN Infinity 1e999 \U0001f600 \u2028 ]]]'
    r1 = c.post("/v1/jobs", json=job(query=text, tools=[nested_array_tool(4)]), headers=h)  # depth 6: the limit
    # A raw U+2028 inside a JSONL string is legal JSON and does not end the line.
    lines = "\n".join(json.dumps(j, ensure_ascii=False) for j in (job(id=7, query="one \u2028 line"), job(id="b")))
    r2 = c.post("/v1/jobs/batch", content=lines.encode(), headers={**h, "content-type": "application/x-ndjson"})
    assert (r1.status_code, r2.status_code) == (202, 202), (r1.text, r2.text)
    assert c.get(f"/v1/jobs/{r1.json()['id']}", headers=h).json()["query"] == text
    assert [c.get(f"/v1/jobs/{i}", headers=h).json()["client_id"] for i in r2.json()["ids"]] == ["7", "b"]
    assert stored(env)[0] == before[0] + 3


def test_cursor_paging_still_works_and_is_tenant_bound(env: dict[str, Any], pg_url: str) -> None:
    c, h = env["client"], env["h"]
    c.post("/v1/jobs/batch", json=[job(), job(), job()], headers=h)
    first = c.get("/v1/jobs?limit=2", headers=h).json()
    second = c.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=h)
    assert second.status_code == 200, second.text
    assert not {j["id"] for j in first["jobs"]} & {j["id"] for j in second.json()["jobs"]}
    with transaction(env["sessions"]) as s:
        other, _ = create_key(s, "tenant-hostile-other")
    # A cursor is signed for its tenant: another tenant cannot replay it.
    r = c.get("/v1/jobs", params={"cursor": first["next_cursor"]}, headers={"X-API-Key": other})
    assert r.status_code == 400 and "cursor" in r.json()["detail"]


def test_unexpected_exception_is_a_json_500_with_a_request_id(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import api.routes.jobs as routes

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "get_job", boom)
    with TestClient(env["app"], raise_server_exceptions=False) as client, caplog.at_level("ERROR", "hyfunc.api"):
        r = client.get(f"/v1/jobs/{env['job']}", headers={**env["h"], "X-Request-ID": "trace-42"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "request_id": "trace-42"}
    assert r.headers["x-request-id"] == "trace-42"
    logged = [rec for rec in caplog.records if "trace-42" in rec.getMessage()]
    assert logged and logged[0].exc_info and "a bug" in str(logged[0].exc_info[1])


def test_unreachable_store_is_a_json_503_without_driver_text(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import api.routes.jobs as routes

    def down(*_: Any, **__: Any) -> None:
        raise OperationalError("SELECT 1", {}, Exception("could not connect to server at 10.0.0.7:5432"))

    monkeypatch.setattr(routes, "get_job", down)
    with TestClient(env["app"], raise_server_exceptions=False) as client:
        r = client.get(f"/v1/jobs/{env['job']}", headers=env["h"])
    assert r.status_code == 503
    assert r.json()["detail"] == "store unavailable" and r.json()["request_id"] == r.headers["x-request-id"]
    assert "10.0.0.7" not in r.text


@pytest.mark.parametrize("lines", [False, True], ids=["json", "jsonl"])
def test_json_depth_limit_is_exact(env: dict[str, Any], lines: bool) -> None:
    """limits.max_json_depth levels pass the guard (the route then judges the content); one more does not."""
    c, h, limit = env["client"], env["h"], LIMITS["max_json_depth"]
    content_type = "application/x-ndjson" if lines else "application/json"
    at_limit = c.post("/v1/jobs/batch", content=("[" * limit + "]" * limit).encode(),
                      headers={**h, "content-type": content_type})
    over = c.post("/v1/jobs/batch", content=("[" * (limit + 1) + "]" * (limit + 1)).encode(),
                  headers={**h, "content-type": content_type})
    assert at_limit.status_code == 422 and "max_json_depth" not in at_limit.json()["detail"], at_limit.text
    assert over.status_code == 422 and "limits.max_json_depth" in over.json()["detail"], over.text


def test_concurrent_toolset_versions_are_not_a_500(env: dict[str, Any]) -> None:
    """Two requests racing to add a version of one name meet the unique (tenant, name, version)
    constraint: the loser retries on the new latest version instead of answering 500."""
    from concurrent.futures import ThreadPoolExecutor

    c, h = env["client"], env["h"]

    def register(i: int) -> Any:
        tool = {"name": f"tool_{i}", "parameters": {"type": "object", "properties": {}}}
        return c.post("/v1/toolsets", json={"name": "raced", "tools": [tool]}, headers=h)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(register, range(16)))
    assert [r.status_code for r in responses] == [201] * 16, [r.text for r in responses if r.status_code != 201]
    assert sorted(r.json()["version"] for r in responses) == list(range(1, 17))


def test_a_forged_but_signed_cursor_is_still_a_400(env: dict[str, Any]) -> None:
    """Should the cursor key leak (a derived key on a password-less store URL is guessable),
    a forged cursor with a time SQL cannot bind is still refused, not a 500."""
    import base64

    from api import cursors

    raw = base64.urlsafe_b64encode(f"0001-01-01T00:00:00+01:00|{'0' * 32}".encode()).decode().rstrip("=")
    forged = cursors.sign(env["app"].state.hyfunc.cursor_key, env["tenant"], raw)
    r = env["client"].get("/v1/jobs", params={"cursor": forged}, headers=env["h"])
    assert r.status_code == 400 and "cursor" in r.json()["detail"], r.text
