"""`serve` on a database that is not migrated: a clear refusal, or a migration when asked."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from service import db
from tests.conftest import free_port
from tests.databases import scratch_database


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
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "service", "serve", "--migrate"],
                              env=_env(empty_database, port), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 200:
            assert server.poll() is None, server.communicate()[1]
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code
            except httpx.TransportError:
                time.sleep(0.2)
        assert status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        errors = server.communicate(timeout=60)[1]
    assert server.returncode == 0, errors
