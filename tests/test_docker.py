"""The Docker deployment's promises that can be checked without a container engine
(docker/smoke.sh checks the rest end to end): the API image's code path imports no model
package, the liveness route needs nothing, the compose file keeps its defaults."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # docker/requirements.py runs on the images' Python 3.11


def _requirements_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_requirements", ROOT / "docker" / "requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_requirements_leave_out_exactly_the_model_stack() -> None:
    req = _requirements_module()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {req._name(d) for d in deps}
    # Every excluded name is a real dependency: a rename in pyproject.toml must not leave the
    # API image installing the new name (or the exclusion list naming nothing).
    assert names >= req.MODEL_ONLY
    api = {req._name(d) for d in req.requirements("api")}
    assert api == names - req.MODEL_ONLY
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "celery", "redis"} <= api
    worker = {req._name(d) for d in req.requirements("worker")}
    assert worker == names - {"torch"}


def test_api_migrations_and_keys_run_with_the_model_stack_blocked(tmp_path: Path) -> None:
    """What the api image runs (`hyfunc api`, `hyfunc db upgrade`, `hyfunc keys create`), in a
    fresh interpreter where importing torch, transformers, numpy, ... raises ImportError."""
    blocked = sorted(_requirements_module().MODEL_ONLY_MODULES)
    db = tmp_path / "api.sqlite"
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked in the api image: " + name)
        sys.meta_path.insert(0, Block())

        from hyfunc.cli import main
        assert main(["db", "upgrade"]) == 0
        assert main(["keys", "create", "--tenant", "t"]) == 0

        from fastapi.testclient import TestClient
        from api.app import create_app
        from hyfunc.config import load_config
        import hyfunc.cli.service  # `hyfunc api`
        config = load_config(overrides={{"store.url": "sqlite:///{db}"}})
        client = TestClient(create_app(config))
        assert client.get("/livez").json() == {{"status": "ok"}}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("API-OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYFUNC_")}
    env["HYFUNC_DATABASE_URL"] = f"sqlite:///{db}"  # as the containers get theirs
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "API-OK" in done.stdout, done.stderr[-3000:]
    assert done.stdout.splitlines()[1].startswith("hf_")  # the key, printed once on stdout


def test_livez_answers_with_database_and_broker_down() -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from hyfunc.config import load_config

    config = load_config(overrides={"store.url": "postgresql+psycopg://nobody@127.0.0.1:9/none",
                                    "worker.broker_url": "redis://127.0.0.1:9/0"})
    client = TestClient(create_app(config))
    assert client.get("/livez").status_code == 200
    head = client.head("/livez")
    assert head.status_code == 200 and head.content == b""
    assert client.get("/healthz").status_code == 503  # readiness does depend on them


def test_index_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hyfunc.config import load_config

    monkeypatch.setenv("HYFUNC_INDEX_DIR", str(tmp_path / "index"))
    assert load_config().cascade.index_dir == str(tmp_path / "index")
    monkeypatch.delenv("HYFUNC_INDEX_DIR")
    assert load_config().cascade.index_dir is None


def test_compose_defaults() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        if name == "migrate":  # one-shot: exits, never restarted
            assert service["restart"] == "no" and service["command"] == ["hyfunc", "db", "upgrade"]
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
        for port in service.get("ports", []):
            assert port.startswith("${HYFUNC_API_BIND:-127.0.0.1}:"), (name, port)
    assert "-h" in services["postgres"]["healthcheck"]["test"]  # TCP, not the Unix socket
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert "upgrade" not in " ".join(services["api"].get("command", []))
    assert compose["x-hyfunc-env"]["HYFUNC_METRICS_TOKEN"].startswith("${HYFUNC_METRICS_TOKEN:?")
    worker_volumes = " ".join(services["worker"]["volumes"])
    assert "index:/var/lib/hyfunc/index" in worker_volumes and "model-cache:/var/cache/hyfunc" in worker_volumes
    assert services["beat"]["profiles"] == ["beat"]  # optional
    assert "build" not in services["beat"]  # the worker image, not a third build
