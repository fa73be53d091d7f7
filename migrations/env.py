"""Alembic environment: target metadata is hyfunc.store.models; URL from the caller or config."""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context

from hyfunc.store.db import make_engine, normalize_url
from hyfunc.store.models import Base, UTCDateTime

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    # Order: explicit attribute (hyfunc db ...), `alembic -x url=...`, then the HyFunc config.
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from hyfunc.config import load_config

        url = load_config().store.url
    return normalize_url(url)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations must not import application types: a UTCDateTime is a plain DateTime
    # in the database.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _options(url: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "render_item": _render_item,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        "render_as_batch": url.startswith("sqlite"),
    }


def run_migrations_offline() -> None:
    url = _url()
    context.configure(url=url, literal_binds=True, **_options(url))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options(url))
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url, one_shot=True)
    with engine.connect() as conn:
        context.configure(connection=conn, **_options(url))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
