"""Alembic environment shared by the report service and the lineage plugin.

The URL is taken, in order, from ``-x url=...``, the Config's ``sqlalchemy.url`` (set by
``d6_reports.db.upgrade``) and ``D6_DATABASE_URL``. Migrations are hand-written and use batch
mode so that ALTERs work on SQLite too.
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy import pool

from d6_reports.config import Settings

config = context.config
if config.config_file_name is not None:
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or Settings.from_env().database_url
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    from d6_reports.db import make_engine

    url = _url()
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
