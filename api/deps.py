"""Request-scoped dependencies: the app's state, a database session, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from hyfunc.config import HyFuncConfig
from hyfunc.store.keys import authenticate
from hyfunc.store.models import Tenant


@dataclass
class AppState:
    config: HyFuncConfig
    sessions: sessionmaker[Session]
    celery: Celery
    metrics_registry: CollectorRegistry | None = None
    cursor_key: bytes = b""  # HMAC key of list cursors (api.cursors)


def get_state(request: Request) -> AppState:
    return request.app.state.hyfunc


def get_session(state: Annotated[AppState, Depends(get_state)]) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


# Security schemes, so the OpenAPI document says how to authenticate (either one works);
# auto_error=False: a missing key is answered below as a 401 with the usual error body.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the tenant's API key")
BEARER = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


def get_tenant(
    session: Annotated[Session, Depends(get_session)],
    x_api_key: Annotated[str | None, Security(API_KEY_HEADER)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Tenant:
    key = x_api_key or (bearer.credentials if bearer else None)
    if not key:
        raise ApiError(401, "missing API key: send it in the X-API-Key header")
    tenant = authenticate(session, key)
    if tenant is None:
        raise ApiError(401, "invalid API key")
    # The key lookup opened a transaction; end it so the route starts its own cleanly.
    session.commit()
    return tenant


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]
TenantDep = Annotated[Tenant, Depends(get_tenant)]
