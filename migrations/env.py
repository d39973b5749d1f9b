"""Alembic environment: async, one transaction, serialised across replicas by an advisory lock."""

from __future__ import annotations

import asyncio
import os
import re

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from service.db import asyncpg_url, create_engine
from service.errors import ConfigError
from service.retention import PARTITIONED
from service.tables import SCHEMA_LOCK_KEY, metadata

# Partitions (`inbox_p2026_11`, `inbox_default`) are made at run time, not by migrations.
_PARTITION = re.compile(rf"^({'|'.join(PARTITIONED)})_(p\d{{4}}_\d{{2}}|default)$")


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    return not (type_ == "table" and name and _PARTITION.match(name))


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True,
                      include_name=_include_name)
    with context.begin_transaction():
        # Replicas starting together wait here instead of racing; released at commit.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        connection.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        context.run_migrations()


async def _run_async(url: str) -> None:
    # honours ?pgbouncer=true; a migration may rewrite a large table: no statement bound
    engine = create_engine(url, timeout_s=30, pool_size=1, statement_timeout_s=None)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _url() -> str:
    """`dlr-reconciler migrate`'s URL; by hand (`alembic … downgrade <rev>`), `-x dburl=…`,
    else DLR_DATABASE_URL, else sqlalchemy.url in alembic.ini; spelled as the service reads it."""
    url = (context.config.attributes.get("database_url")
           or context.get_x_argument(as_dictionary=True).get("dburl")
           or os.environ.get("DLR_DATABASE_URL")
           or context.config.get_main_option("sqlalchemy.url"))
    if not url:
        raise SystemExit("no database URL: give -x dburl=postgresql://user:password@host/database "
                         "or set DLR_DATABASE_URL")
    try:
        return asyncpg_url(str(url))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async(_url()))
