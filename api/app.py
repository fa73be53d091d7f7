"""FastAPI application factory. `uvicorn api.app:app` reads the config from $HYFUNC_CONFIG."""

from __future__ import annotations

from fastapi import FastAPI

from api.cursors import cursor_key
from api.deps import AppState
from api.errors import RequestIdMiddleware, install_handlers
from api.json_guard import JsonBodyGuard
from api.limits import BodySizeLimit
from api.metrics import make_registry
from api.openapi import truthful_openapi
from api.routes import export, jobs, ops, replays, toolsets
from hyfunc import __version__
from hyfunc.config import HyFuncConfig, load_config
from hyfunc.store.db import session_factory
from producer import create_celery

DESCRIPTION = """Queue-driven intent-to-function-call service.

Every `/v1` route needs an API key in the `X-API-Key` header (or `Authorization: Bearer`).
A key belongs to one tenant, and a tenant sees only its own jobs, toolsets and replays.
"""


def create_app(config: HyFuncConfig | None = None) -> FastAPI:
    config = config or load_config()
    app = FastAPI(title="HyFunc", version=__version__, description=DESCRIPTION)
    sessions = session_factory(config.store.url)
    celery = create_celery(config)
    state = AppState(config=config, sessions=sessions, celery=celery, cursor_key=cursor_key(config))
    state.metrics_registry = make_registry(sessions, celery, config.worker.queue)
    app.state.hyfunc = state
    install_handlers(app)
    # The last added runs first: request id, then the size limit, then the JSON guard.
    app.add_middleware(JsonBodyGuard, max_depth=config.limits.max_json_depth)
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    for module in (jobs, toolsets, replays, export, ops):
        app.include_router(module.router)
    truthful_openapi(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.app:app` without building an app (and reading config) at import time.
    if name == "app":
        return create_app()
    raise AttributeError(name)
