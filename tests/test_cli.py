"""`serve` on a database that is not migrated: a clear refusal, or a migration when asked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from service import db
from tests.conftest import free_port
from tests.databases import scratch_database
from tests.services import serving


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, migrated=False) as url:
        yield url


def _env(url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DLR_CONFIG"}
    return env | {"DLR_DATABASE_URL": url, "DLR_PORT": str(port)}


def test_serve_refuses_an_unmigrated_database(empty_database: str) -> None:
    result = subprocess.run([sys.executable, "-m", "service", "serve"],
                            env=_env(empty_database, free_port()), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 4
    assert "no schema yet: run `dlr-reconciler migrate`" in result.stderr


def test_serve_refuses_an_older_schema(empty_database: str) -> None:
    async def fake_old_revision() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await conn.execute("CREATE TABLE alembic_version (version_num text);"
                               "INSERT INTO alembic_version VALUES ('0000')")
        finally:
            await conn.close()

    asyncio.run(fake_old_revision())
    result = subprocess.run([sys.executable, "-m", "service", "serve"],
                            env=_env(empty_database, free_port()), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 4
    assert f"at revision 0000, this version needs {db.head_revision()}" in result.stderr


def test_serve_migrate_migrates_then_serves(empty_database: str) -> None:
    with serving(_env(empty_database, free_port()), "--migrate") as served:
        assert httpx.get(f"{served.base}/health/ready").status_code == 200
    assert served.process.returncode == 0, served.output
