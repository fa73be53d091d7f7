"""Engines and sessions for the job store: SQLite (embedded default, WAL) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from hyfunc.config import hyfunc_home


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain PostgreSQL URLs and anchor relative SQLite paths.

    `postgresql://` would select psycopg2, which is not a dependency; operators write
    the plain form, so we map it here rather than make them know the dialect name.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///"):]
        if rel and rel != ":memory:" and not rel.startswith("file:"):
            # A relative SQLite path is relative to $HYFUNC_HOME (else the working directory),
            # like models.dir: never to the installed package.
            path = Path(rel)
            if not path.is_absolute():
                path = hyfunc_home() / path
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets the API read while a worker writes; busy_timeout makes writers wait
    # for each other instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


_ENGINES: dict[str, Engine] = {}


def make_engine(url: str, *, one_shot: bool = False) -> Engine:
    """A new engine; `one_shot` keeps no pooled connections (migrations, CLI commands)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"poolclass": NullPool} if one_shot else {}
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if one_shot:
        return create_engine(url, poolclass=NullPool)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def get_engine(url: str) -> Engine:
    """One engine per URL per process (engines own connection pools)."""
    key = normalize_url(url)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = make_engine(key)
    return engine


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def session_factory(url_or_engine: str | Engine) -> sessionmaker[Session]:
    engine = get_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    # expire_on_commit=False: routes and the worker read rows after committing them.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits at the end of the block, or rolls back on error."""
    with factory() as session, session.begin():
        yield session
