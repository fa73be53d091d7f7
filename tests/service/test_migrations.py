"""Alembic is the only source of the schema: it must go up, down and up again, and the
models must match what it builds (autogenerate finds nothing to do)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import create_database, drop_database
from sqlalchemy import inspect

from hyfunc.store import migrate
from hyfunc.store.db import make_engine
from hyfunc.store.models import Base

pytestmark = pytest.mark.service

TABLES = {"tenants", "api_keys", "toolsets", "replays", "jobs", "feedback", "workers", "counters",
          "maintenance_locks"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
        return
    url = create_database("hyfunc_migr")
    yield url
    drop_database(url)


def _tables(url: str) -> set[str]:
    engine = make_engine(url, one_shot=True)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list:
    engine = make_engine(url, one_shot=True)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    assert _tables(empty_db) == TABLES
    assert migrate.current(empty_db) is not None
    migrate.downgrade(empty_db, "base")
    assert _tables(empty_db) == set()
    assert migrate.current(empty_db) is None
    migrate.upgrade(empty_db)
    assert _tables(empty_db) == TABLES
    # The models describe exactly what the migrations built.
    assert _diff(empty_db) == []


def test_autogenerate_sees_a_model_change(empty_db: str) -> None:
    """Guards the test above: the comparison does detect drift when there is some."""
    migrate.upgrade(empty_db)
    engine = make_engine(empty_db, one_shot=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN stray INTEGER")
    engine.dispose()
    diff = _diff(empty_db)
    assert any(op[0] == "remove_column" and op[3].name == "stray" for op in diff), diff


def test_0003_adds_the_decoder_stage_columns_and_its_downgrade_drops_only_them(empty_db: str) -> None:
    added = {"lms_wait_ms", "program_ms", "sample_ms"}

    def columns_and_checks() -> tuple[set[str], set[str]]:
        engine = make_engine(empty_db, one_shot=True)
        try:
            inspector = inspect(engine)
            columns = {c["name"] for c in inspector.get_columns("jobs")}
            return columns, {c["name"] for c in inspector.get_check_constraints("jobs")}
        finally:
            engine.dispose()

    migrate.upgrade(empty_db, "0002")
    before, checks = columns_and_checks()
    assert not added & before and checks  # jobs has its status CHECK to keep
    migrate.upgrade(empty_db, "0003")
    assert migrate.current(empty_db) == "0003"
    after, checks_after = columns_and_checks()
    assert after == before | added and checks_after == checks
    migrate.downgrade(empty_db, "0002")
    assert columns_and_checks() == (before, checks)  # no table rebuild lost a constraint
    migrate.upgrade(empty_db)
    assert _diff(empty_db) == []
