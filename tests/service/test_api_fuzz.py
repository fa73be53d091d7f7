"""Schemathesis against the app's own OpenAPI document, in process (ASGI), with an API key.

Every operation gets generated requests, valid and invalid by the schema; the checks are
that nothing answers 5xx and that every response matches what the document says (status
codes, content types, headers, bodies), and that schema-invalid input is refused with a
4xx. What the schema cannot express (a registered toolset name, a tool schema the
cascade accepts) is why positive-data acceptance is not among the checks.

Bounded: a fixed number of examples per operation, no deadline, deterministic data, so
the run takes well under two minutes on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import WEATHER, write_config
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.core.failures import FailureGroup

from hyfunc.store.db import session_factory, transaction
from hyfunc.store.keys import create_key

pytestmark = pytest.mark.service

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    ignored_auth,
]
CONFIG = schemathesis.Config.from_dict({"generation": {"max-examples": MAX_EXAMPLES}})


@pytest.fixture(scope="module")
def fuzz_env(pg_url: str, redis_url: str, queue_name: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from api.app import create_app

    config, _ = write_config(
        tmp_path_factory.mktemp("fuzz") / "config.yaml",
        store={"url": pg_url},
        worker={"broker_url": redis_url, "queue": queue_name},
        limits={"max_json_depth": 32, "max_schema_depth": 8},
    )
    with transaction(session_factory(pg_url)) as s:
        key, _ = create_key(s, "tenant-fuzz")
    app = create_app(config)
    headers = {"X-API-Key": key}
    with TestClient(app) as client:
        # Something for generated names to find now and then, and the toolset the examples name.
        for name in ("a", "weather"):
            r = client.post("/v1/toolsets", json={"name": name, "tools": [WEATHER]}, headers=headers)
            assert r.status_code == 201, r.text
    yield {"app": app, "headers": headers}


@pytest.fixture(scope="module")
def api_schema(fuzz_env: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_env["app"], config=CONFIG)


def run_cases(operation: Any, strategy: Any, label: str, headers: dict[str, str] | None, max_examples: int,
              statuses: list[int]) -> list[str]:
    """Call and check every case a strategy draws; return the failures (one each, no shrinking)."""
    failures: list[str] = []
    # /healthz answers a documented 503 while no worker is alive (as here): its answer, not a crash.
    checks = [c for c in CHECKS if not (operation.path == "/healthz" and c is not_a_server_error)]

    @given(case=strategy)
    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    def run(case: schemathesis.Case) -> None:
        try:
            response = case.call(headers=headers)
            statuses.append(response.status_code)
            case.validate_response(response, checks=checks, headers=headers)
        except (Exception, FailureGroup) as err:  # noqa: BLE001 - collected, reported together below
            failures.append(f"{operation.label} [{label}]: {type(err).__name__}: {err}"[:3000])

    try:
        run()
    except Unsatisfiable:
        # Nothing in the operation can be made invalid (e.g. no parameters and no body).
        assert label == GenerationMode.NEGATIVE.value, operation.label
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_api_conforms_to_its_openapi(api_schema: Any, fuzz_env: dict[str, Any], mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    failures: list[str] = []
    for operation in operations:
        headers = fuzz_env["headers"] if operation.path.startswith("/v1") else None
        strategy = operation.as_strategy(generation_mode=mode)
        failures += run_cases(operation, strategy, mode.value, headers, MAX_EXAMPLES, [])
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:30])


def test_documented_examples_are_accepted(api_schema: Any, fuzz_env: dict[str, Any]) -> None:
    """The request examples in the document work as shown (and conform like everything else)."""
    failures: list[str] = []
    accepted: dict[str, list[int]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        headers = fuzz_env["headers"] if operation.path.startswith("/v1") else None
        for strategy in api_schema.get_strategies_from_examples(operation):
            statuses = accepted.setdefault(operation.label, [])
            failures += run_cases(operation, strategy, "examples", headers, 3, statuses)
    assert not failures, "\n\n".join(failures[:30])
    for label in ("POST /v1/jobs", "POST /v1/jobs/batch", "POST /v1/toolsets"):
        assert accepted.get(label) and all(200 <= s < 300 for s in accepted[label]), (label, accepted.get(label))


def test_openapi_declares_the_real_error_bodies(fuzz_env: dict[str, Any]) -> None:
    with TestClient(fuzz_env["app"]) as client:
        doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(doc)  # FastAPI's array-shaped 422 is never sent
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1"):
                assert {"401", "422", "500", "503"} <= set(responses), (method, path)
                assert operation["security"], (method, path)
            for code, response in responses.items():
                if code.startswith(("4", "5")) and "content" in response:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ServerErrorOut" if code.startswith("5") else "/ErrorOut"), (path, code)
