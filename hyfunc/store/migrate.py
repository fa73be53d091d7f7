"""Run Alembic migrations programmatically (used by `hyfunc db` and the tests)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from hyfunc.config import REPO_ROOT
from hyfunc.store.db import normalize_url

ALEMBIC_INI = REPO_ROOT / "alembic.ini"


def alembic_config(url: str) -> Config:
    cfg = Config(str(ALEMBIC_INI))
    cfg.attributes["url"] = normalize_url(url)
    # The CLI configures logging itself; alembic's fileConfig would reset it.
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
