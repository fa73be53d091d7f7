"""Store errors, free of HTTP: the service layers map them (the API to 503, the worker to
"stop consuming and requeue")."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


class StoreUnavailable(RuntimeError):
    """The database could not be reached; nothing was written."""


def is_unavailable(err: BaseException) -> bool:
    """True for a lost or refused database connection (not for a bad statement)."""
    if isinstance(err, StoreUnavailable | OperationalError | InterfaceError):
        return True
    return isinstance(err, DBAPIError) and bool(err.connection_invalidated)
