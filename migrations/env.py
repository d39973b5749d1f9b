"""Alembic environment: async, one transaction, serialised across replicas by an advisory lock."""

from __future__ import annotations

import asyncio
import re

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from service.db import create_engine
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
    url = context.config.attributes.get("database_url") or context.config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: use `dlr-reconciler migrate` or set sqlalchemy.url")
    return str(url)


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async(_url()))
