"""Scratch PostgreSQL databases for tests and benchmarks: the local server, else an embedded one."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from service import db


def _answers(url: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def server_or_embedded(url: str, embedded_dir: Path) -> str:
    """`url` when that server answers, else a new embedded server's URL (asyncpg spelling)."""
    if _answers(url):
        return url
    return db.start_embedded(embedded_dir).replace("+asyncpg", "")


@contextmanager
def scratch_database(server_url: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database on the server (asyncpg URL), dropped on exit."""
    name = f"dlr_scratch_{secrets.token_hex(4)}"
    base, _, query = server_url.partition("?")
    url = f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        if migrated:
            db.migrate(db.asyncpg_url(url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
